"""`workbench` command line: thin wrappers over the package's functions.

Every training command takes `--config FILE.yaml|json` (a stage config) and flags that override it,
and `--json` to print one final JSON line for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path

from workbench import cli_checks
from workbench.runs import ConfigError, config_from_dict, load_config


def _config(cls, args, mapping: dict[str, str]):
    """Stage config = defaults <- --config file <- explicit flags (those not None)."""
    config = load_config(cls, args.config) if getattr(args, "config", None) else None
    data = {} if config is None else {k: v for k, v in vars(config).items()}
    for flag, field_name in mapping.items():
        value = getattr(args, flag, None)
        if value is not None:
            data[field_name] = value
    if "shaping" in {f.name for f in dataclasses.fields(cls)} and _shaping_flags_given(args):
        data["shaping"] = _shaping(args, data.get("shaping"))
    return config_from_dict(cls, data, source=args.config or "command line")


def _add_shaping_flags(p) -> None:
    """The answer-shaping policy (`workbench.generation.AnswerShaping`): complete, short replies by default."""
    p.add_argument("--no-shaping", dest="no_shaping", action="store_true", default=None,
                   help="raw sampling: the model's own system prompt, replies cut only at --max-new-tokens")
    p.add_argument("--system-prompt", help="system prompt asking for brief replies ('' keeps the chat template's own)")
    p.add_argument("--stop", choices=["sentence", "eos"],
                   help="sentence (default): end a reply at its first sentence end once it has --min-words words; "
                        "eos: only where the model ends it")
    p.add_argument("--min-words", type=int, help="words a reply needs before a sentence end stops it (default 8)")


def _shaping_flags_given(args) -> bool:
    return any(getattr(args, name, None) is not None for name in ("no_shaping", "system_prompt", "stop", "min_words"))


def _shaping(args, base=None):
    """AnswerShaping = `base` (a config's, or the default) <- the shaping flags that were given."""
    from workbench.shaping import AnswerShaping

    shaping = AnswerShaping.from_dict(base) if isinstance(base, dict) else base or AnswerShaping()
    changes = {}
    if getattr(args, "no_shaping", None):
        changes["enabled"] = False
    if getattr(args, "system_prompt", None) is not None:
        changes["system_prompt"] = args.system_prompt or None
    if getattr(args, "stop", None) is not None:
        changes["stop_at_sentence_end"] = args.stop == "sentence"
    if getattr(args, "min_words", None) is not None:
        changes["min_words"] = args.min_words
    return dataclasses.replace(shaping, **changes)


def _print(result, args) -> None:
    if os.environ.get("RANK", "0") != "0":  # under `accelerate launch` only the main process reports
        return
    if args.json:
        print(json.dumps(result, default=str), file=args.stdout)
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


def cmd_models(args) -> None:
    from workbench.models import describe_models, prepare_offline_copy

    for name in args.prepare or []:
        print(f"{name}: {prepare_offline_copy(name)}", file=sys.stderr)
    rows = describe_models()
    if args.json:
        print(json.dumps(rows), file=args.stdout)
        return
    for row in rows:
        ready = "ready" if row["offline_ready"] else "not prepared"
        print(f"{row['name']:<24} {row['kind']:<7} offline copy: {ready:<12} {row['description']}")


def cmd_prepare(args) -> None:
    from workbench.models import prepare_offline_copy

    for name in args.names:
        print(f"{name}: {prepare_offline_copy(name)}")


def cmd_generate(args) -> None:
    from workbench.data import load_prompts
    from workbench.generation import SamplingConfig, generate
    from workbench.models import load_policy

    if (args.prompt is None) == (args.prompts is None):
        raise ValueError("give exactly one of --prompt TEXT or --prompts FILE")
    prompts = [args.prompt] * args.n if args.prompt is not None else [r.prompt for r in load_prompts(args.prompts)]
    where = "--prompt" if args.prompt is not None else f"--prompts {args.prompts}"
    cli_checks.check_prompt_chars(prompts, where)  # before the model loads: a huge prompt is refused at once
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed, batch_size=args.batch_size, show_progress=not args.json,
                            shaping=_shaping(args))
    model, tokenizer = load_policy(args.model, dtype=args.dtype)
    cli_checks.check_prompt_tokens(tokenizer.encode, prompts, where, getattr(model.config, "max_position_embeddings",
                                                                             None), args.max_new_tokens)
    for completion in generate(model, tokenizer, prompts, config):
        if args.json:
            print(json.dumps({"prompt": completion.prompt, "completion": completion.text,
                              "n_tokens": len(completion.token_ids), "sum_logprob": completion.sum_logprob,
                              "finished": completion.finished, "stop_reason": completion.stop_reason}),
                  file=args.stdout)
        else:
            print(f"--- {completion.text}" + ("" if completion.finished else "  [cut off]"))


def cmd_pretrain(args) -> None:
    from workbench.pretrain import PretrainConfig, pretrain

    config = _config(PretrainConfig, args, {"text": "text", "preset": "preset", "steps": "max_steps",
                                            "seed": "seed", "batch_size": "batch_size", "seq_len": "seq_len"})
    result = pretrain(config, args.out)
    summary = result.summary()
    if not args.json:
        summary["samples_before"], summary["samples_after"] = result.samples_before, result.samples_after
    _print(summary, args)


def cmd_sft(args) -> None:
    from workbench.sft import SFTRunConfig, supervised_finetune

    config = _config(SFTRunConfig, args, {"data": "data", "model": "model", "steps": "max_steps", "seed": "seed",
                                          "learning_rate": "learning_rate", "batch_size": "batch_size"})
    _print(supervised_finetune(config, args.out), args)


def _store(path: str, read_only: bool = False):
    from workbench.preferences import PreferenceStore

    return PreferenceStore(path, read_only=read_only)  # read_only: a command that only reads never creates a store


def cmd_pairs(args) -> None:
    from workbench.models import load_policy
    from workbench.preferences.pairs import PairConfig, make_pairs
    from workbench.preferences.simulate import prompts_for

    policy = load_policy(args.policy)
    policy_b = load_policy(args.policy_b) if args.policy_b else None
    config = PairConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                        shaping=_shaping(args))
    pairs = make_pairs(prompts_for(args.n), policy, config, policy_b=policy_b,
                       model_names=(args.policy, args.policy_b or args.policy), show_progress=not args.json)
    added = _store(args.db).add_pairs(pairs)
    _print({"db": args.db, "n_pairs": len(pairs), "n_new": added}, args)


def cmd_label(args) -> None:
    from workbench.models import load_policy
    from workbench.oracles import SimulatedLabeler
    from workbench.preferences.pairs import PairConfig
    from workbench.preferences.simulate import collect_simulated_preferences

    labeler = SimulatedLabeler(args.oracle, temperature=args.noise, seed=args.seed)
    config = PairConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                        shaping=_shaping(args))
    if args.rank_k is not None:  # K answers per prompt, ranked by a Plackett-Luce draw (preferences/rankings.py)
        from workbench.preferences.rankings import MAX_K, MIN_K, collect_simulated_rankings

        if not MIN_K <= args.rank_k <= MAX_K:
            raise ValueError(f"--rank-k {args.rank_k}: a ranking holds {MIN_K} to {MAX_K} answers.")
        summary = collect_simulated_rankings(_store(args.db), load_policy(args.policy), args.pairs, labeler,
                                             args.rank_k, config, model_name=args.policy)
        _print({"db": args.db, "oracle": args.oracle, **summary}, args)
        return
    summary = collect_simulated_preferences(_store(args.db), load_policy(args.policy), args.pairs, labeler, config,
                                            model_name=args.policy, show_progress=not args.json)
    _print({"db": args.db, "oracle": args.oracle, **summary}, args)


def cmd_prefs(args) -> None:
    from workbench.oracles import get_oracle
    from workbench.preferences import (
        PreferenceImportError,
        export_preferences,
        import_preferences,
        to_csv,
        to_jsonl,
        to_parquet,
    )

    from workbench.preferences.ranking_io import export_ranking_pairs, import_rankings
    from workbench.preferences.rankings import RankingStore

    store = _store(args.db, read_only=args.action != "import")
    if args.action == "stats":
        stats = store.stats(gold=get_oracle(args.oracle) if args.oracle else None)
        print(json.dumps({**stats, "rankings": RankingStore(store).stats()}), file=args.stdout)
    elif args.action == "export":
        if args.rankings:  # each ranking as its C(K, 2) pairs, with a ranking_id column
            dataset, report = export_ranking_pairs(store, ties=args.ties)
        else:
            dataset, report = export_preferences(store, keep=tuple(args.keep.split(",")), form=args.format)
        writer = {".jsonl": to_jsonl, ".parquet": to_parquet, ".csv": to_csv}.get(Path(args.path).suffix)
        if writer is None:
            dataset.save_to_disk(args.path)
        else:
            writer(dataset, args.path)
        _print({"path": args.path, **report}, args)
    else:
        try:
            if args.rankings:
                report = import_rankings(args.path, store, skip_invalid=args.skip_invalid, split=args.split,
                                         limit=args.limit)
            else:
                report = import_preferences(args.path, store, skip_invalid=args.skip_invalid, split=args.split,
                                            limit=args.limit, prompt_column=args.prompt_column,
                                            chosen_column=args.chosen_column, rejected_column=args.rejected_column)
        except PreferenceImportError as error:
            raise ValueError(error.describe("add --skip-invalid to import only the valid ones")) from None
        _print({"path": args.path, "n_rows": report.n_rows, "n_imported": report.n_imported,
                "n_skipped": report.n_skipped, "errors": [str(e) for e in report.errors[:20]]}, args)


def cmd_oracles(args) -> None:
    from workbench.evaluation.agreement import agreement_pairs, labeler_agreement

    names = args.oracles.split(",") if args.oracles else None
    result = labeler_agreement(names, agreement_pairs(args.pairs) if args.pairs else None)
    if not args.json:
        for name, row in result.items():
            a = row["agreement"]
            print(f"{name:24s} {a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}] n={a['n']}  {row['by_contrast']}",
                  file=args.stdout)
        return
    _print(result, args)


def cmd_train_rm(args) -> None:
    from workbench.preferences import export_preferences, import_preferences
    from workbench.reward import RewardModelConfig, train_reward_model

    if (args.db is None) == (args.dataset is None):
        raise ValueError("give exactly one of --db PATH or --dataset PATH")
    config = _config(RewardModelConfig, args, {"kind": "kind", "backbone": "backbone", "epochs": "epochs",
                                               "seed": "seed", "oracle": "oracle", "resume": "resume", "bf16": "bf16"})
    store = _store(args.db, read_only=True) if args.db else _store(str(Path(args.out) / "prefs.sqlite"))
    if args.dataset:  # validated row by row; nothing lands unless all rows are valid
        import_preferences(args.dataset, store)
    dataset, report = export_preferences(store, keep=("A", "B", "tie"))  # ties train as half a win each side
    from workbench.preferences.ranking_io import export_ranking_pairs

    ranked, ranking_report = export_ranking_pairs(store, ties="keep")  # each ranking weighted once (listwise.py)
    result = train_reward_model(dataset.to_list() + ranked.to_list(), config, args.out)
    _print({**result.summary(), "export": report, "rankings": ranking_report}, args)


def _preference_rows(args) -> list[dict]:
    """Rows {prompt, chosen, rejected} from --prefs (a store) or --dataset (validated like `prefs import`)."""
    from workbench.preferences import export_preferences, import_preferences

    if args.dataset:
        with _store(str(Path(args.out) / "prefs.sqlite")) as store:
            import_preferences(args.dataset, store)
            return export_preferences(store)[0].to_list()
    if args.prefs:
        if not Path(args.prefs).exists():
            raise FileNotFoundError(f"--prefs {args.prefs}: no such preference store")
        with _store(args.prefs, read_only=True) as store:
            return export_preferences(store)[0].to_list()
    return []


def cmd_train_rl(args) -> None:
    from workbench.rl import RLConfig, train_policy

    config = _config(RLConfig, args, {"policy": "policy", "reward": "reward", "algo": "algo", "steps": "steps",
                                      "beta": "beta", "lora": "lora", "resume": "resume", "seed": "seed",
                                      "learning_rate": "learning_rate", "oracle": "oracle", "bf16": "bf16",
                                      "lora_learning_rate": "lora_learning_rate", "max_new_tokens": "max_new_tokens", "save_steps": "save_steps",
                                      "snapshot_steps": "snapshot_steps", "ppo_epochs": "ppo_epochs",
                                      "num_minibatches": "num_minibatches", "cliprange": "cliprange",
                                      "cliprange_value": "cliprange_value", "gae_lambda": "gae_lambda",
                                      "target_kl": "target_kl", "kl_horizon": "kl_horizon",
                                      "value_init": "value_init", "vf_coef": "vf_coef"})
    rows = _preference_rows(args) if config.algo == "dpo" else []
    result = train_policy(config, args.out, preference_rows=rows)
    _print(result.summary(), args)


def cmd_evaluate(args) -> None:
    from workbench.evaluation.report import EvaluateConfig, evaluate_run

    config = _config(EvaluateConfig, args, {"base": "base", "policy": "policy", "reward": "reward", "oracle": "oracle",
                                            "n_prompts": "n_prompts", "seed": "seed", "bon_max_n": "bon_max_n",
                                            "max_new_tokens": "max_new_tokens"})
    report = evaluate_run(config, args.out)
    keys = ("path", "n_prompts", "win_rate_gold", "win_rate_proxy", "gold", "proxy", "kl", "words", "rl_vs_bon")
    _print({k: report[k] for k in keys if k in report}, args)


def cmd_pipeline(args) -> None:
    from workbench.pipeline import get_preset, run_pipeline

    preset = get_preset(args.preset, policy=args.policy, algo=args.algo, rl_steps=args.steps, n_pairs=args.pairs,
                        beta=args.beta, seed=args.seed, lora=args.lora, labeler_noise=args.noise,
                        oracle=args.oracle)
    _print(run_pipeline(preset, args.out), args)


def _auth_pairs(args) -> list[tuple[str, str]]:
    """--auth user:pass (repeatable) and --auth-file FILE (one user:pass per line; blank lines and # comments skipped)."""
    entries = [(value, "--auth") for value in args.auth or []]
    if args.auth_file:
        path = Path(args.auth_file)
        if not path.is_file():
            raise FileNotFoundError(f"--auth-file {path}: no such file")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                entries.append((line.strip(), f"{path}, line {number}"))
    pairs = []
    for value, where in entries:
        user, sep, password = value.partition(":")
        if not sep or not user.strip() or not password:
            raise ValueError(f"{where}: expected user:password, got {value.split(':')[0]!r}:... Fix: write user:password.")
        pairs.append((user.strip(), password))
    return pairs


def cmd_app(args) -> None:
    from apps.workbench_app import launch

    auth = _auth_pairs(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not auth:
        raise ValueError(f"--host {args.host} exposes the app beyond this machine; add --auth user:password or "
                         "--auth-file FILE so that only people you know can label and start training.")
    launch(args.run, args.model, args.reward_backbone, host=args.host, port=args.port, auth=auth or None,
           root_path=args.root_path, extra_hosts=tuple(args.allowed_host or ()), show_paths=args.show_paths)


def build_parser() -> argparse.ArgumentParser:
    from workbench.rl.config import ALGORITHMS, VALUE_INITS  # a light module: dataclasses only

    parser = argparse.ArgumentParser(prog="workbench", description="RLHF workbench: pretrain, prefer, reward, RL.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the registered models and whether their offline copies are ready")
    p.add_argument("--prepare", nargs="*", metavar="NAME", help="build these offline copies first")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("prepare", help="build offline copies of models (done by `make app` / `make test`)")
    p.add_argument("names", nargs="*", default=["smollm2-135m-instruct", "tiny-random-llama", "minilm-l6"])
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("generate", help="sample completions from a policy")
    p.add_argument("model", help="registry name, local folder or Hub id")
    p.add_argument("--prompt", help="one prompt (plain text; the chat template is applied)")
    p.add_argument("--prompts", help="a .jsonl/.csv file or dataset with a 'prompt' column")
    p.add_argument("-n", type=int, default=1, help="samples of --prompt (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=64, help="token budget of a reply (default 64)")
    _add_shaping_flags(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"])
    p.add_argument("--json", action="store_true", help="one JSON object per completion")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("pretrain", help="pretrain a tiny causal LM from scratch on plain text")
    p.add_argument("--text", help="text file or dataset (default: the built-in story corpus)")
    p.add_argument("--out", required=True, help="run directory (writes <out>/pretrain/)")
    p.add_argument("--preset", help="model size: tiny or small")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="PretrainConfig as YAML/JSON")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("sft", help="supervised fine-tuning with TRL's SFTTrainer")
    p.add_argument("--data", help="JSONL/CSV/dataset with text, messages, or prompt+completion")
    p.add_argument("--model", help="policy to fine-tune (default smollm2-135m-instruct)")
    p.add_argument("--out", required=True, help="run directory (writes <out>/sft/)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="SFTRunConfig as YAML/JSON")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("pairs", help="generate pairs of completions into a preference store")
    p.add_argument("--db", required=True, help="SQLite preference store, e.g. runs/demo/prefs.sqlite")
    p.add_argument("-n", type=int, default=32, help="number of pairs (built-in train prompts, cycled)")
    p.add_argument("--policy", default="smollm2-135m-instruct")
    p.add_argument("--policy-b", help="a second model for side B (default: two samples of --policy)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64, help="token budget of a reply (default 64)")
    _add_shaping_flags(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser("label", help="generate pairs and label them with a simulated labeler")
    p.add_argument("--db", required=True)
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--oracle", default="helpful-upbeat-concise", help="helpful-upbeat-concise (default), upbeat-concise, task, positive, concise, no-repeat")
    p.add_argument("--noise", type=float, default=0.1, help="Bradley-Terry temperature of the labeler")
    p.add_argument("--rank-k", type=int, metavar="K",
                   help="rank K answers per prompt (2..9, Plackett-Luce draw, same --noise) instead of pairs; "
                        "--pairs then counts the prompts ranked")
    p.add_argument("--policy", default="smollm2-135m-instruct")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the pairs")
    p.add_argument("--max-new-tokens", type=int, default=64, help="token budget of a reply (default 64)")
    _add_shaping_flags(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("prefs", help="preference store: stats, export, import")
    # one subparser per action: options and the PATH positional may come in any order
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    stats = actions.add_parser("stats", help="counts, position bias, agreement (JSON)")
    stats.add_argument("--oracle", help="also agreement with this gold labeler")
    export = actions.add_parser("export", help="current labels as a preference dataset")
    export.add_argument("path", help=".jsonl/.parquet/.csv file or a folder (save_to_disk)")
    export.add_argument("--keep", default="A,B", help="choices to keep (default A,B; ties etc. are dropped)")
    export.add_argument("--rankings", action="store_true",
                        help="export the rankings instead, each as its C(K,2) pairs with a ranking_id column")
    export.add_argument("--ties", choices=["drop", "keep"], default="drop",
                        help="--rankings: pairs of equal rank dropped (default) or kept with choice 'tie'")
    export.add_argument("--format", choices=["explicit", "implicit"], default="explicit",
                        help="explicit: prompt, chosen, rejected (default); implicit: chosen and rejected each "
                             "hold the prompt (HH-RLHF imports come back as their dialogue text)")
    imported = actions.add_parser("import", help="add a preference dataset to the store (validated row by row)")
    imported.add_argument("path", help=".jsonl/.parquet file, a save_to_disk or load_dataset folder, or a Hub "
                                       "dataset name (e.g. Anthropic/hh-rlhf); explicit or implicit prompts")
    imported.add_argument("--skip-invalid", action="store_true", help="import valid rows, report the rest")
    imported.add_argument("--rankings", action="store_true",
                          help="rows are rankings: prompt, completions (2..9), ranks (1 = best, ties equal)")
    imported.add_argument("--split", help="the split to import where there are several (e.g. train)")
    imported.add_argument("--limit", type=int, help="import only the first N rows")
    for column in ("prompt", "chosen", "rejected"):
        imported.add_argument(f"--{column}-column", default=column, metavar="NAME",
                              help=f"the column holding {column} (default {column})")
    for action in (stats, export, imported):
        action.add_argument("--db", required=True, help="SQLite preference store, e.g. runs/demo/prefs.sqlite")
        action.add_argument("--json", action="store_true")
        action.set_defaults(func=cmd_prefs)

    p = sub.add_parser("oracles", help="simulated labelers: agreement with the hand-judged pairs")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    agree = actions.add_parser("agree", help="each labeler's agreement with the hand-judged set, with a 95%% CI")
    agree.add_argument("--oracles", help="comma-separated labelers (default: all of workbench.oracles.ORACLES)")
    agree.add_argument("--pairs", help="a .jsonl of pairs of the same shape (default: the packaged set)")
    agree.add_argument("--json", action="store_true")
    agree.set_defaults(func=cmd_oracles)

    p = sub.add_parser("train-rm", help="train a reward model with TRL's RewardTrainer")
    p.add_argument("--db", help="preference store to train on")
    p.add_argument("--dataset", help="or a preference dataset (.jsonl/.parquet/folder with prompt, chosen, rejected)")
    p.add_argument("--out", required=True, help="run directory (writes <out>/reward/)")
    p.add_argument("--kind", help="auto (default: by label count), embedding-head, minilm-l6, policy or ensemble")
    p.add_argument("--backbone", help="model of the kind (default: the kind's own, e.g. minilm-l6) or a policy name/path")
    p.add_argument("--epochs", type=float)
    p.add_argument("--oracle", help="gold labeler for gold accuracy (default helpful-upbeat-concise)")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the last checkpoint")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on where bf16 math is native, e.g. AVX512-BF16 CPUs, bf16 GPUs)")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="RewardModelConfig as YAML/JSON")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train_rm)

    p = sub.add_parser("train-rl", help="RL against a reward model (rloo, grpo, ppo) or DPO from preferences")
    p.add_argument("--policy", help="policy to tune (default smollm2-135m-instruct); also the frozen reference")
    p.add_argument("--reward", help="trained reward model folder, e.g. runs/NAME/reward/model (rloo, grpo, ppo)")
    p.add_argument("--out", required=True, help="run directory (writes <out>/rl/)")
    p.add_argument("--algo", choices=list(ALGORITHMS), help="default rloo")
    p.add_argument("--steps", type=int, help="optimiser steps (default 30)")
    p.add_argument("--beta", type=float, help="KL coefficient (default 0.05)")
    p.add_argument("--learning-rate", type=float, help="full fine-tune's learning rate (default 1e-5)")
    p.add_argument("--lora-learning-rate", type=float, help="with --lora (default 1e-4)")
    p.add_argument("--max-new-tokens", type=int, help="token budget of a sampled reply (default 64)")
    _add_shaping_flags(p)
    p.add_argument("--save-steps", type=int)
    p.add_argument("--snapshot-steps", type=int, nargs="+", metavar="STEP",
                   help="also keep the policy's weights after these steps (rl/snapshots/step-N) for the evaluation")
    p.add_argument("--lora", action="store_true", default=None, help="train LoRA adapters (merged when saved)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on where bf16 math is native, e.g. AVX512-BF16 CPUs, bf16 GPUs)")
    p.add_argument("--oracle", help="gold labeler logged next to the proxy (default helpful-upbeat-concise)")
    p.add_argument("--value-init", choices=list(VALUE_INITS),
                   help="ppo: value model from the reward model (default; a copy of the policy when the RM's tokenizer "
                        "differs) or a scalar head on the policy")
    p.add_argument("--ppo-epochs", type=int, help="ppo: passes over each rollout batch (default 4)")
    p.add_argument("--num-minibatches", type=int, help="ppo: minibatches per pass, one optimiser step each (default 1)")
    p.add_argument("--cliprange", type=float, help="ppo: epsilon of the clipped surrogate (default 0.2)")
    p.add_argument("--cliprange-value", type=float, help="ppo: clip range of the value loss (default 0.2)")
    p.add_argument("--gae-lambda", type=float, help="ppo: GAE lambda (default 0.95; gamma is 1)")
    p.add_argument("--vf-coef", type=float, help="ppo: weight of the value loss (default 0.1)")
    p.add_argument("--target-kl", type=float,
                   help="ppo: adaptive KL controller's target in nats per completion (default: a fixed --beta)")
    p.add_argument("--kl-horizon", type=int, help="ppo: adaptive KL controller's horizon in samples (default 10000)")
    p.add_argument("--prefs", help="dpo: preference store to train on")
    p.add_argument("--dataset", help="dpo: or a preference dataset (.jsonl/.parquet/folder)")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the last complete checkpoint")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="RLConfig as YAML/JSON")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train_rl)

    p = sub.add_parser("evaluate", help="base vs tuned policy: proxy and gold rewards, win rates, KL, best-of-n")
    p.add_argument("--base", help="base policy (default smollm2-135m-instruct)")
    p.add_argument("--policy", required=True, help="tuned policy folder, e.g. runs/NAME/rl/policy")
    p.add_argument("--reward", required=True, help="reward model folder, e.g. runs/NAME/reward/model")
    p.add_argument("--oracle", help="gold labeler (default helpful-upbeat-concise)")
    p.add_argument("--n-prompts", type=int, help="held-out prompts (default 64)")
    p.add_argument("--bon-max-n", type=int, help="largest n of the best-of-n baseline (power of 2; 0 skips)")
    p.add_argument("--max-new-tokens", type=int, help="token budget of a sampled reply (default 64)")
    _add_shaping_flags(p)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="report path (default <policy>/../eval.json)")
    p.add_argument("--config", help="EvaluateConfig as YAML/JSON")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("pipeline", help="every stage end to end with a simulated labeler: label, RM, RL, evaluate")
    p.add_argument("--preset", default="quick",
                   help="quick (default models, ~15 min on 2 CPU cores), gpu (one 80 GB GPU) or smoke")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--policy")
    p.add_argument("--algo", choices=list(ALGORITHMS))
    p.add_argument("--steps", type=int, help="RL steps")
    p.add_argument("--pairs", type=int, help="labelled pairs")
    p.add_argument("--beta", type=float)
    p.add_argument("--lora", action="store_true", default=None, help="RL with LoRA adapters")
    p.add_argument("--oracle", help="gold labeler (default helpful-upbeat-concise)")
    p.add_argument("--noise", type=float, help="Bradley-Terry temperature of the simulated labeler (default 0.1)")
    p.add_argument("--seed", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("app", help="open the Gradio app on http://127.0.0.1:7860")
    p.add_argument("--run", default="runs/demo", help="run directory the app works in (default runs/demo)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="policy that writes the pairs")
    p.add_argument("--reward-backbone", default="minilm-l6", help="backbone of reward models trained in the app")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only; others need --auth)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", action="append", metavar="USER:PASS", help="a login (repeatable); labels carry the name")
    p.add_argument("--auth-file", metavar="FILE", help="logins, one user:pass per line")
    p.add_argument("--root-path", help="the public URL behind a reverse proxy, e.g. https://lab.example/workbench")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a Host name the app answers to besides loopback and --host (repeatable; reverse proxies)")
    p.add_argument("--show-paths", action="store_true", help="show the run directory's absolute path on the page")
    p.set_defaults(func=cmd_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    from workbench.data import PromptFileError
    from workbench.models import ModelNotFoundError
    from workbench.preferences import PreferenceImportError
    from workbench.preferences.store import StoreError

    args = build_parser().parse_args(argv)
    args.stdout = sys.stdout  # with --json, stdout carries only JSON: library chatter (trainer logs) goes to stderr
    created = cli_checks.new_outputs(args)  # removed again if the command is refused
    try:
        cli_checks.check_args(args)
        with contextlib.redirect_stdout(sys.stderr if getattr(args, "json", False) else sys.stdout):
            args.func(args)
    except (ConfigError, PromptFileError, ModelNotFoundError, ValueError, KeyError, FileNotFoundError,
            FileExistsError, StoreError) as error:
        cli_checks.remove_new_outputs(created)
        message = error.args[0] if isinstance(error, KeyError) and error.args else error  # KeyError quotes its text
        if isinstance(error, PreferenceImportError):  # from --dataset of train-rm / train-rl: say it in CLI terms
            message = error.describe("import the valid rows first: workbench prefs import FILE --db DB --skip-invalid")
        print(f"workbench {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
