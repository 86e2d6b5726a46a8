"""Before/after evaluation of a tuned policy against its base, on held-out prompts with the same seeds.

Reports the proxy (reward model) and gold (simulated labeler) rewards with bootstrap CIs, the win rate of tuned
over base by each (ties 0.5), and the sequence KL(pi || pi_ref) estimated from the tuned policy's own samples:
    KL = E_{y ~ pi} [ sum_t log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t) ]
A Monte-Carlo estimate of a KL, so its mean must be >= 0 up to noise; a clearly negative one means a bug
(e.g. scoring at another temperature than sampling).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from workbench.data import PromptRecord, builtin_prompts
from workbench.evaluation.metrics import bootstrap_ci, pairwise_outcomes
from workbench.generation import (AnswerShaping, SamplingConfig, completion_logprobs, generate, prompt_text,
                                  sampling_precision)
from workbench.oracles import get_oracle


@dataclass
class PolicyEvalConfig:
    n_prompts: int = 64  # held-out prompts (first n of the built-in held-out split)
    max_new_tokens: int = 64  # token budget; shaping ends most replies at a sentence end before it
    temperature: float = 0.7  # the RL sampling temperature: KL is measured between the tempered distributions
    seed: int = 0
    batch_size: int = 32  # prompts sampled together: 32 x 40 tokens of SmolLM2-135M in fp32 take 8.5 s, by 8 18.1 s
    oracle: str = "helpful-upbeat-concise"
    # fp32 sampling: the policy exactly as saved. bf16 autocast (True, or None = where bf16 math is native) is faster
    # but rounds the weights, and most RL updates are below bf16's resolution (see `sampling_precision`)
    bf16: bool | None = False
    shaping: AnswerShaping = field(default_factory=AnswerShaping)  # the answers people and the RM saw
    show_progress: bool = False  # a progress bar per sampling call (notebooks)

    def __post_init__(self) -> None:
        if isinstance(self.shaping, dict):
            self.shaping = AnswerShaping.from_dict(self.shaping)
        if self.n_prompts < 1:
            raise ValueError(f"n_prompts must be >= 1, got {self.n_prompts}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (KL needs a sampling distribution), got {self.temperature}")

    def sampling(self) -> SamplingConfig:
        # plain tempered sampling (no top-k/top-p truncation), so teacher-forced log-probs are the exact sampler's
        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=1.0, top_k=0,
                              seed=self.seed, batch_size=self.batch_size, shaping=self.shaping,
                              show_progress=self.show_progress)


def sequence_kl(policy, reference, tokenizer, prompts, completion_ids, temperature: float,
                system_prompt: str | None = None) -> np.ndarray:
    """Per sample: sum_t log pi(y_t) - log pi_ref(y_t), both at `temperature`, over the sampled (kept) tokens."""
    mine = completion_logprobs(policy, tokenizer, prompts, completion_ids, temperature=temperature,
                               system_prompt=system_prompt)
    ref = completion_logprobs(reference, tokenizer, prompts, completion_ids, temperature=temperature,
                              system_prompt=system_prompt)
    return np.array([float(np.sum(a) - np.sum(b)) for a, b in zip(mine, ref)])


def token_logratios(policy, reference, tokenizer, prompt, completion_ids: list[int], temperature: float = 0.7,
                    system_prompt: str | None = None) -> list[dict]:
    """Each token of one completion with log pi/pi_ref: where the tuned policy departs from the reference."""
    mine = completion_logprobs(policy, tokenizer, [prompt], [completion_ids], temperature=temperature,
                               system_prompt=system_prompt)[0]
    ref = completion_logprobs(reference, tokenizer, [prompt], [completion_ids], temperature=temperature,
                              system_prompt=system_prompt)[0]
    return [{"token": tokenizer.decode([t]), "logratio": a - b} for t, a, b in zip(completion_ids, mine, ref)]


def evaluate_policies(base, tuned, tokenizer, reward_model, config: PolicyEvalConfig | None = None,
                      prompts: list[PromptRecord] | None = None, base_samples: list | None = None) -> dict:
    """Base vs tuned on the same prompts and seeds. `base`/`tuned` are models sharing `tokenizer`.

    `base_samples`: the base policy's completions from an earlier call with the same config and prompts (returned
    as result["base_samples"]): the base samples the same completions for the same seed, so they are reused."""
    config = config or PolicyEvalConfig()
    available = prompts or builtin_prompts("heldout")
    if config.n_prompts > len(available):
        raise ValueError(f"n_prompts={config.n_prompts} but only {len(available)} evaluation prompts exist")
    records = available[: config.n_prompts]
    prompt_list = [r.prompt for r in records]
    gold = get_oracle(config.oracle)
    if base_samples is not None and [s.prompt for s in base_samples] != prompt_list:
        raise ValueError("base_samples were drawn for other prompts than this evaluation's")
    with sampling_precision(config.bf16):
        if base_samples is None:
            base_samples = generate(base, tokenizer, prompt_list, config.sampling())
        tuned_samples = generate(tuned, tokenizer, prompt_list, config.sampling())
    scores = {}
    for name, samples in (("base", base_samples), ("tuned", tuned_samples)):
        texts = [s.text for s in samples]
        scores[name] = {"proxy": np.array(reward_model.score(prompt_list, texts)),
                        "gold": np.array([gold(prompt_text(p), t) for p, t in zip(prompt_list, texts)]),
                        "words": np.array([len(t.split()) for t in texts]),
                        "finished": np.array([s.finished for s in samples], dtype=float)}
    kl = sequence_kl(tuned, base, tokenizer, prompt_list, [s.token_ids for s in tuned_samples], config.temperature,
                     config.shaping.active_system_prompt)
    seed = config.seed
    summary = {
        "n_prompts": len(records),
        "config": {"temperature": config.temperature, "max_new_tokens": config.max_new_tokens, "seed": config.seed,
                   "oracle": config.oracle, "shaping": asdict(config.shaping)},
        "proxy": {name: bootstrap_ci(s["proxy"], seed=seed).to_dict() for name, s in scores.items()},
        "gold": {name: bootstrap_ci(s["gold"], seed=seed).to_dict() for name, s in scores.items()},
        "words": {name: float(s["words"].mean()) for name, s in scores.items()},
        "finished": {name: float(s["finished"].mean()) for name, s in scores.items()},
        "win_rate_proxy": bootstrap_ci(pairwise_outcomes(scores["tuned"]["proxy"], scores["base"]["proxy"]), seed=seed).to_dict(),
        "win_rate_gold": bootstrap_ci(pairwise_outcomes(scores["tuned"]["gold"], scores["base"]["gold"]), seed=seed).to_dict(),
        "kl": bootstrap_ci(kl, seed=seed).to_dict(),
    }
    table = [{"prompt": prompt_text(r.prompt),
              "base": b.text, "base_proxy": float(scores["base"]["proxy"][i]), "base_gold": float(scores["base"]["gold"][i]),
              "tuned": t.text, "tuned_proxy": float(scores["tuned"]["proxy"][i]), "tuned_gold": float(scores["tuned"]["gold"][i]),
              "kl": float(kl[i])}
             for i, (r, b, t) in enumerate(zip(records, base_samples, tuned_samples))]
    return {"summary": summary, "table": table, "base_samples": base_samples,
            "tuned_samples": [{"prompt": s.prompt, "token_ids": s.token_ids} for s in tuned_samples]}
