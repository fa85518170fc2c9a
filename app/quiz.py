"""The comprehension quiz between the instructions and the lobby.

Defined once, here: the entry page renders these questions, and the server checks the answers
(``POST /api/quiz``) and records the attempts, so a worker who skips the page is not paired and
the data say how many tries each worker needed.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel


class QuizQuestion(BaseModel):
    q: str
    options: tuple[str, ...]
    answer: int  # index into options
    why: str  # shown when the answer is wrong


QUIZ: tuple[QuizQuestion, ...] = (
    QuizQuestion(
        q="Who can write messages?",
        options=("Only the speaker", "Only the listener", "Both players"),
        answer=0,
        why="Only the speaker writes, one message per turn. The listener answers by selecting pictures.",
    ),
    QuizQuestion(
        q="Which pictures should the listener select?",
        options=("Exactly the target pictures, no more and no fewer", "As many pictures as possible", "One picture per turn"),
        answer=0,
        why="The game is won when the submitted selection is exactly the targets.",
    ),
    QuizQuestion(
        q="Do both players see the pictures in the same order?",
        options=('Yes, so positions like "top left" help', "No, so describe what the pictures look like"),
        answer=1,
        why="Each player has their own order: describe shapes, not positions.",
    ),
    QuizQuestion(
        q="What does the speaker see after the listener submits?",
        options=("Nothing", "The listener's selection: green = correct, red = wrong", "Only whether the game was won"),
        answer=1,
        why="The speaker sees each selected picture in green (a target) or red (not a target).",
    ),
)


def questions_for_page() -> list[dict]:
    """What the page shows: questions, options and hints, not the answers."""
    return [{"q": x.q, "options": list(x.options), "why": x.why} for x in QUIZ]


def wrong_answers(answers: Sequence[int | None]) -> list[int]:
    """Indices of the questions answered wrongly or not at all."""
    return [i for i, x in enumerate(QUIZ) if i >= len(answers) or answers[i] != x.answer]


def answer_key() -> list[int]:
    """The right answers (for bots, which take the quiz like everyone else)."""
    return [x.answer for x in QUIZ]
