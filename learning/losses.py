"""The losses of docs/method.md, each a small pure function of tensors (TRL style).

Every loss returns one value per example; the trainer sums them and divides by the size of the
effective batch, so gradient accumulation gives the same update as one large batch. The token
log-probabilities come from :func:`token_logps` (full vocabulary) or
:func:`constrained_token_logps` (renormalised over the legal next tokens, the distribution the
deployed policy samples from, see ``policy_worker.decoding``).

Shapes: B examples, T action tokens (the stop token included), V vocabulary, K allowed tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# docs/method.md: reward per decoded label for the REINFORCE variants.
DEFAULT_REWARDS: dict[int, float] = {1: 1.0, 0: 0.0, -1: -0.1}


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(a_t) and the per-token mean over the vocabulary of log p(v).

    logits [B, T, V] predict targets [B, T]. Returns (logp [B, T], mean_logp [B, T]), computed
    in float32; the second feeds the label-smoothing term of :func:`sup_loss`.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), logp.mean(-1)


def constrained_token_logps(
    logits: torch.Tensor, targets: torch.Tensor, allowed: torch.Tensor, allowed_mask: torch.Tensor
) -> torch.Tensor:
    """log π_c(a_t) = z_{a_t} − log Σ_{v ∈ allowed_t} exp z_v: the policy as constrained decoding
    samples it (temperature 1), so Σ_t log π_c(a_t) is the log of the stored ``prob_action``.

    logits [B, T, V]; targets [B, T]; allowed [B, T, K] token ids (padded); allowed_mask [B, T, K]
    marks the real ones. Steps without any allowed token (padding) return 0.
    """
    z = logits.float()
    picked = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    cand = z.gather(-1, allowed).masked_fill(~allowed_mask, -math.inf)
    norm = torch.logsumexp(cand, dim=-1)
    has_any = allowed_mask.any(-1)
    return torch.where(has_any, picked - torch.where(has_any, norm, 0.0), 0.0)


def sequence_logps(logps: torch.Tensor, mask: torch.Tensor, normalise: bool) -> torch.Tensor:
    """Σ_t m_t log p_t, or its mean over the tokens if ``normalise`` (length-normalised)."""
    mask = mask.to(logps.dtype)
    total = (logps * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1.0) if normalise else total


def smoothing_term(mean_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The label-smoothing term of docs/learning.md: mean_t ( −(1/V) Σ_v log p_v ) over the
    action's tokens [B]. ``mean_logps`` is the second output of :func:`token_logps`."""
    return sequence_logps(-mean_logps, mask, normalise=True)


def sup_loss(
    logps: torch.Tensor, mean_logps: torch.Tensor, mask: torch.Tensor, label_smoothing: float = 0.1
) -> torch.Tensor:
    """Length-normalised NLL with label smoothing ε (B-SUP / T-SUP, positives only):

        L_i = (1/|a_i|) Σ_t [ −(1−ε) log p(a_t) − ε (1/V) Σ_v log p(v) ]

    the per-token term being ``F.cross_entropy(..., label_smoothing=ε)``.
    """
    eps = label_smoothing
    per_token = -(1.0 - eps) * logps - eps * mean_logps
    return sequence_logps(per_token, mask, normalise=True)


def importance_weights(
    policy_seq_logps: torch.Tensor,
    deployed_probs: torch.Tensor,
    positive: torch.Tensor,
    floor: float = 0.01,
) -> torch.Tensor:
    """w_i = 1 for positives, else π(a|x) / max(π_deployed(a|x), floor), detached.

    policy_seq_logps [B] are log π(a|x) (whole action, not normalised); deployed_probs [B] are
    the stored probabilities, NaN where unknown (human listeners, imported games): those get
    w = 1, as if the data were on-policy.
    """
    ratio = policy_seq_logps.detach().exp() / deployed_probs.clamp(min=floor)
    use_one = positive | torch.isnan(deployed_probs)
    return torch.where(use_one, torch.ones_like(ratio), ratio)


def rl_loss(
    norm_logps: torch.Tensor,
    rewards: torch.Tensor,
    weights: torch.Tensor,
    smoothing: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """REINFORCE as a contextual bandit (B-RL / T-RL), with the reference's smoothing:

        L_i = (1−ε) · ( − w_i · r_i · (1/|a_i|) Σ_t log π(a_t | x, a_<t) ) + ε · |r_i| · S_i

    norm_logps [B] length-normalised log-probs; rewards r [B] (+1 / 0 / −0.1); weights w [B]
    from :func:`importance_weights` (already detached); S [B] from :func:`smoothing_term`.
    ε = 0 (no ``smoothing``) is the plain form of docs/method.md.
    """
    loss = -(weights.detach() * rewards * norm_logps)
    if smoothing is None or label_smoothing == 0.0:
        return loss
    return (1.0 - label_smoothing) * loss + label_smoothing * rewards.abs() * smoothing


def smoothed(loss: torch.Tensor, smoothing: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """(1−ε) · loss + ε · S: how the reference adds the smoothing term to KTO (ε = 0.01)."""
    if label_smoothing == 0.0:
        return loss
    return (1.0 - label_smoothing) * loss + label_smoothing * smoothing


def kto_reference_point(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> torch.Tensor:
    """z = max(0, mean_i [log π(a_i|x_i) − log π_ref(a_i|x_i)]), detached.

    The reference passes the mismatched single-click actions a′ of the whole effective batch,
    scored before the update; ``kl_estimate = "batch"`` passes the batch's own actions instead.
    """
    return (policy_logps - reference_logps).mean().clamp(min=0.0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor | float,
    beta: float = 0.5,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Kahneman–Tversky optimisation (B-KTO / T-KTO); r_i = log π(a_i|x_i) − log π_ref(a_i|x_i):

        desirable (positive label):    L_i = λ_D (1 − σ(β (r_i − z)))
        undesirable (negative label):  L_i = λ_U (1 − σ(β (z − r_i)))

    π_ref is the deployed policy (its stored action probabilities), z the reference point
    (:func:`kto_reference_point`, or 0).
    """
    r = policy_logps - reference_logps
    good = desirable_weight * (1.0 - torch.sigmoid(beta * (r - kl)))
    bad = undesirable_weight * (1.0 - torch.sigmoid(beta * (kl - r)))
    return torch.where(desirable, good, bad)


def rewards_for(labels: torch.Tensor, rewards: dict[int, float] = DEFAULT_REWARDS) -> torch.Tensor:
    """Map labels {+1, 0, −1} [B] to rewards [B]."""
    out = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    for label, value in rewards.items():
        out = torch.where(labels == label, torch.tensor(value, device=labels.device), out)
    return out
