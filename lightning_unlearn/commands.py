"""What each ``lightning-unlearn`` command does once its arguments are parsed (:mod:`~lightning_unlearn.cli`
parses them and turns errors into exit codes): ``demo``, ``unlearn``, ``evaluate`` and ``export``, on
:mod:`~lightning_unlearn.load`, :mod:`~lightning_unlearn.edit`, :mod:`~lightning_unlearn.export` and
:mod:`~lightning_unlearn.report`. Each returns the report that ``--json`` writes, and names its
complete outputs in ``args.done``. Heavy imports stay inside the commands.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import UnlearnError
from .request import ForgetRequest, read_names

PROG = "lightning-unlearn"


class CLIError(UnlearnError):
    """Bad input: printed as one line on stderr, exit code 2."""


def _warn(args, notes) -> None:
    print("".join(f"{PROG} {args.command}: warning: {n}\n" for n in notes), end="", file=sys.stderr)


def _config(args):
    from .edit import UnlearnConfig  # None: the library default
    return UnlearnConfig(**{k: v for k in ("method", "alpha", "depth") if (v := getattr(args, k)) is not None})


def _is_embedded(args) -> bool:
    if getattr(args, "embedded", False) and args.model is not None:
        raise CLIError("give either --embedded or --model, not both")
    from .load import is_embedded
    return is_embedded(args.model)


def load_model(args):
    """The model the ``--model`` / ``--pretrained`` / ``--embedded`` options name, in eval mode."""
    from .load import EMBEDDED, check_name, load_clip
    pretrained = getattr(args, "pretrained", None)
    if not _is_embedded(args) and not args.model.startswith("local-dir:") and not pretrained:
        check_name(args.model)
        raise CLIError(f"--model {args.model} needs --pretrained PATH (a weights file); an architecture alone has "
                       "random weights")
    return load_clip(args.model or EMBEDDED, pretrained, device=getattr(args, "device", "cpu"))


def cmd_demo(args) -> dict:
    from .report import demo
    if args.n_per_cell < 1:
        raise CLIError(f"--n-per-cell must be >= 1, got {args.n_per_cell}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; give a folder for the figure")
    cfg, args.model, args.embedded = _config(args), None, True
    return demo(load_model(args), cfg, args.n_per_cell, out, args.batch_size, not args.no_progress, PROG,
                check=args.check)


def cmd_unlearn(args) -> dict:
    from .data.datasets import evidence_from_folder, recorded
    from .data.world import CLASSES, DOMAINS
    from .edit import unlearn_
    from .export import EDIT_NAME, save_model_and_edit
    from .staging import check_output
    from .state import config_dict
    inputs = [args.model.removeprefix("local-dir:") if (args.model or "").startswith("local-dir:") else None,
              getattr(args, "pretrained", None)]  # what is read: never replaced by the output
    out = check_output(args.output, args.overwrite, inputs=inputs)
    classnames = read_names(args.classnames, "--classnames")
    if classnames is None and not _is_embedded(args):
        raise CLIError("--classnames is required with --model (the embedded default knows its own): give a comma "
                       "list or @file with one class name per line")
    request = ForgetRequest(classnames or CLASSES, read_names(args.domains, "--domains") or DOMAINS,
                            read_names(args.forget_classes, "--forget-classes"),
                            read_names(args.forget_domains, "--forget-domains"))
    cfg, lm = _config(args), load_model(args)  # a bad option fails before the model loads
    print(f"{PROG} unlearn: {lm.label}; {request.describe()}", file=sys.stderr)
    evidence, notes = recorded(evidence_from_folder, args.evidence, request, lm.preprocess) if args.evidence \
        else (None, [])
    _warn(args, notes)
    u = unlearn_(lm.model, lm.tokenizer, request, cfg, progress=not args.no_progress, evidence=evidence,
                 check=True if args.check else None)
    files = save_model_and_edit(lm.model, lm.model_cfg, out, args.overwrite, inputs=inputs)
    args.done.append(f"{out}/")
    print(f"forgot {request.describe()} in {u.seconds:.1f} s (removed rank {u.ranks})\nwrote {out}/: {', '.join(files)}"
          f"\nload it with open_clip.create_model_and_transforms('local-dir:{out}'), or re-apply the edit alone to "
          f"the original model with lightning_unlearn.artifact.apply_edit_file_(model, '{out / EDIT_NAME}')")
    if u.check is not None:
        print(u.check.summary())
    return {"model": lm.label, "request": request.to_dict(), "paradigm": request.paradigm,
            "config": config_dict(u.config), "ranks": u.ranks, "seconds": round(u.seconds, 3), "output": str(out),
            "files": files, "evidence": u.infos.get("image", {}).get("evidence"),
            "check": None if u.check is None else u.check.to_dict()}


def cmd_evaluate(args) -> dict:
    import torch
    from .data.datasets import scan_folder
    from .report import evaluation
    from .zeroshot import evaluate
    if not (root := Path(args.data)).is_dir():
        raise CLIError(f"--data {root} " + ("is a file; give a folder laid out as <root>/<domain>/<class>/<image>"
                                            if root.exists() else "does not exist"))
    ds, notes = scan_folder(root, read_names(args.domains, "--domains"), read_names(args.classnames, "--classnames"))
    _warn(args, notes)
    forget = read_names(args.forget_classes, "--forget-classes"), read_names(args.forget_domains, "--forget-domains")
    request = ForgetRequest(ds.classnames, ds.domains, *forget) if any(forget) else None
    if args.audit and request is None:
        raise CLIError("--audit needs the forgotten cells: add --forget-classes and/or --forget-domains")
    lm = load_model(args)
    ds.transform = lm.preprocess
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers)
    try:
        res = evaluate(lm.model, lm.tokenizer, ds.classnames, lm.templates, loader, ds.domains,
                       progress=not args.no_progress)
    except OSError as e:  # an image that became unreadable after the dataset was built
        raise CLIError(str(e)) from e
    report = evaluation(lm.label, root, ds, res, request, PROG) | {"skipped": [str(p) for p in ds.skipped]}
    if args.audit:  # probes fitted on half of each cell, scored on the other half
        from .audit import audit_dataset, format_audit
        from .relearn import summary as relearn_summary
        report["audit"] = audit_dataset(lm.model, lm.tokenizer, request, ds, batch_size=args.batch_size,
                                        num_workers=args.workers, templates=lm.templates)
        report["relearning"] = _relearning(args, lm, request, ds)
        report["audit"] |= relearn_summary(report["relearning"]["model"])
        print(f"depth audit of the forgotten cells:\n{format_audit(report['audit'])}")
    return report


def _relearning(args, lm, request, ds) -> dict:
    """The relearning attack on the model as loaded and, where it carries injected edits, on the
    unedited model (:func:`~lightning_unlearn.relearn.relearning_with_unedited`); printed, and returned."""
    from .relearn import format_relearning, relearning_with_unedited
    out = relearning_with_unedited(lm.model, lm.tokenizer, request, ds, batch_size=args.batch_size,
                                   num_workers=args.workers, templates=lm.templates)
    for key, label in (("model", "the model"), ("unedited", "the unedited model")):
        if out[key] is not None:
            print(format_relearning(out[key], label))
    return out


def cmd_export(args) -> dict:
    from .checkpoint import export_checkpoint  # imports Lightning: only this subcommand needs it
    files = export_checkpoint(args.checkpoint, out := Path(args.output), model=args.model, overwrite=args.overwrite)
    args.done.append(f"{out}/")
    print(f"wrote {out}/: {', '.join(files)}; load it with open_clip.create_model_and_transforms('local-dir:{out}')")
    return {"checkpoint": str(args.checkpoint), "output": str(out), "files": files}
