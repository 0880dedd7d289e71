"""``lightning-unlearn`` (``demo``, ``unlearn``, ``evaluate``, ``export``): parses the arguments and
runs the command (:mod:`~lightning_unlearn.commands`). Bad input ends with a one-line message on
stderr and exit code 2; an interrupt (Ctrl-C), at any point, with a one-line message saying which
outputs were complete and exit code 130 (:mod:`~lightning_unlearn.interrupts`)."""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from pathlib import Path

from . import interrupts
from .commands import PROG, CLIError, cmd_demo, cmd_evaluate, cmd_export, cmd_unlearn

#: Library error wording as the command line spells it (API argument names become options).
_OPTION_NAMES = {f"`{n}`": "--" + n.replace("_", "-") for n in (
    "forget_classes", "forget_domains", "classnames", "domains", "pretrained", "method", "alpha", "depth", "evidence")}
_OPTION_NAMES["pass overwrite=True (--overwrite on the command line)"] = "pass --overwrite"


def _cli_names(message: str) -> str:
    return functools.reduce(lambda m, kv: m.replace(*kv), _OPTION_NAMES.items(), message)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wraps descriptions to the terminal width, keeps the epilog's example lines as written, and appends
    "(default: X)" only for meaningful defaults."""
    def _fill_text(self, text, width, indent):
        if text.startswith("examples:"):  # the epilog: one example per line
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += f" (default: {action.default})"
        return text


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (default: the embedded world model)")
    g.add_argument("--model", metavar="NAME", help="open_clip architecture (e.g. ViT-B-32, with --pretrained) or "
                   "local-dir:DIR (a folder with open_clip_config.json and weights)")
    g.add_argument("--pretrained", metavar="PATH", help="weights file (.safetensors, or a torch state_dict read with "
                   "weights_only=True); without --model: weights for the embedded architecture")
    g.add_argument("--embedded", action="store_true", help="use the embedded world model (the default)")
    g.add_argument("--device", default="cpu", help="torch device")


def _method_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("edit (default: the library's UnlearnConfig)")
    g.add_argument("--method", metavar="NAME", help="'multimodal' (text + visual prototypes) or 'text'")
    g.add_argument("--alpha", type=float, metavar="A", help="strength in [0, 1] (1 = full forgetting)")
    g.add_argument("--depth", metavar="D", help="'shallow' (zero-shot only) or 'deep' (+ an output eraser; "
                   "no whole domains)")


def _name_options(p: argparse.ArgumentParser, title: str, classes: str, domains: str, required_note: str) -> None:
    g = p.add_argument_group(title)
    g.add_argument("--classnames", metavar="NAMES", help=classes)
    g.add_argument("--domains", metavar="NAMES", help=domains)
    g = p.add_argument_group(f"forget request ({required_note}; comma list or @file, one name per line)")
    g.add_argument("--forget-classes", metavar="NAMES", help="classes to forget (in every domain unless "
                   "--forget-domains is also given)")
    g.add_argument("--forget-domains", metavar="NAMES", help="domains to forget (every class, or only "
                   "--forget-classes in them)")


def _output_options(p: argparse.ArgumentParser, *, folder=False, batches=False, json=True) -> None:
    p.add_argument("--overwrite", action="store_true", help=("replace --output (a folder this tool wrote)"
                                                             + (" and --json" if json else "")) if folder
                   else "replace the --json file if it exists")
    if folder:
        p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write (must not exist)")
    if batches:
        p.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per batch")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if json:
        p.add_argument("--json", metavar="PATH", help="write the numbers as JSON ('-' for stdout; an existing file "
                       "only with --overwrite)")


def _command(sub, name: str, func, help: str, description: str, examples: list[str]) -> argparse.ArgumentParser:
    epilog = "examples:\n" + "\n".join(f"  {PROG} {e}" for e in examples)
    p = sub.add_parser(name, formatter_class=_Formatter, help=help, description=description, epilog=epilog)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="Training- and data-free unlearning for open_clip CLIP models: forget classes, whole domains "
                    "or classes in some domains, by a closed-form edit of the projection.",
        epilog=f"""examples:\n  {PROG} demo\n  {PROG} unlearn --forget-classes star -o no-star
run `{PROG} COMMAND --help` for the options and examples of each command.""")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: 1 for demo, else torch's)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _command(sub, "demo", cmd_demo, "run the three paradigms on the embedded model", """Forget one request
per paradigm on the embedded model ("star"; "star" in "sketch"; every class in "painting"), one at a
time; print class x domain accuracy before/after and write demo.png (heatmaps) into --out.""",
                 ["demo", "demo --n-per-cell 10 --out /tmp/demo --json demo.json",
                  "--threads 2 demo          # torch threads (default for the demo: 1)"])
    p.add_argument("--n-per-cell", type=int, default=25, metavar="N", help="test images per (class, domain) cell")
    p.add_argument("--out", default="unlearn-demo", metavar="DIR", help="folder for demo.png")
    p.add_argument("--pretrained", metavar="PATH", help="weights for the embedded architecture (default: shipped)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--check", action="store_true", help="also self-check each edit on held-out synthesised "
                   "prototypes, printed beside the real accuracies (costs one synthesis of every cell's prototypes)")
    _output_options(p, batches=True)
    _method_options(p)

    p = _command(sub, "unlearn", cmd_unlearn, "edit a model and save it (folded) plus the edit", """Write --output as
an open_clip local-dir folder with the edit folded in, plus edit.safetensors + edit.json (the edit
alone, re-appliable to the original weights with lightning_unlearn.artifact.apply_edit_file_).""",
                 ["unlearn --forget-classes star -o no-star",
                  "unlearn --forget-classes heart --forget-domains sketch -o no-sketched-hearts --json info.json",
                  "unlearn --model ViT-B-32 --pretrained vit-b-32.safetensors --classnames @classes.txt \\\n"
                  "      --domains photo,art_painting,cartoon,sketch --forget-domains art_painting -o vit-no-paintings",
                  "unlearn --forget-classes star --depth deep --evidence labelled/ -o no-star-deep"])
    _model_options(p)
    _name_options(p, "label space (comma list or @file, one name per line)",
                  "all class names (default for the embedded model: its 10 shapes; required otherwise)",
                  "all domain names (default: photo,sketch,cartoon,painting)", "at least one")
    _method_options(p)
    p.add_argument("--evidence", metavar="ROOT",
                   help="--depth deep: real images of any cells, <root>/<domain>/<class>/<image>")
    p.add_argument("--check", action="store_true", help="self-check the edit on held-out synthesised prototypes "
                   "(predicted accuracy per cell, worst cells, pass/fail; costs prototype synthesis of every cell)")
    _output_options(p, folder=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = _command(sub, "evaluate", cmd_evaluate, "zero-shot accuracy per (class, domain) on folders", """Zero-shot
accuracy per (class, domain) on <root>/<domain>/<class>/<image> (PACS, DomainNet, Office-Home);
with --forget-classes / --forget-domains also on the forget and retain cells.""",
                 ["evaluate --data world-test/",
                  "evaluate --model local-dir:no-star --data world-test/ --forget-classes star --json eval.json",
                  "evaluate --model ViT-B-32 --pretrained vit-b-32.safetensors --data PACS/ --domains photo,sketch"])
    _model_options(p)
    p.add_argument("--data", required=True, metavar="ROOT", help="image folder root/<domain>/<class>/<image>")
    _name_options(p, "label space (default: the folder names; comma list or @file)",
                  "classes to use, in this order (a subset of the folders)",
                  "domains to use, in this order (a subset of the folders)", "optional")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--audit", action="store_true", help="also audit the forgotten cells in depth (probes, k-NN, "
                   "paraphrases, retrieval; fitted on half of each cell, scored on the other half)")
    _output_options(p, batches=True)

    p = _command(sub, "export", cmd_export, "Lightning checkpoint -> open_clip folder", """Turn a Lightning
checkpoint of lightning_unlearn.module.CLIPUnlearning into a folded open_clip local-dir folder (plus
edit.safetensors when the module's model carries edits). The checkpoint is read with weights_only=True.""",
                 ["export runs/version_0/checkpoints/last.ckpt -o exported",
                  "export last.ckpt -o exported --model ViT-B-32 --overwrite"])
    p.add_argument("checkpoint", metavar="CKPT", help="Lightning .ckpt of CLIPUnlearning")
    p.add_argument("--model", metavar="NAME", help="architecture name or local-dir:DIR, if the checkpoint does not "
                   "record it")
    _output_options(p, folder=True, json=False)
    return parser


def _user_error(e: BaseException) -> bool:  # ValueError covers RequestError; OSError the file errors
    from . import edit, sites
    return isinstance(e, (CLIError, ValueError, edit.EditError, sites.UnsupportedModelError, FileNotFoundError,
                          FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError))


def _interrupted(args, done: list[str]) -> str:
    """The line an interrupt prints: which outputs were written and complete before it."""
    return interrupts.interrupted_line(PROG if args is None else f"{PROG} {args.command}", done,
                                       getattr(args, "json", None))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 130 interrupted). Without
    ``argv`` (the process's own command line) it also takes the process's interrupts and ends the
    process (:func:`~lightning_unlearn.interrupts.end`)."""
    args, done, caught = None, [], []  # done: the outputs written and complete so far, by their names
    if argv is None:
        interrupts.note_interrupts(caught)
    try:
        args = build_parser().parse_args(argv)
        args.done = done
        code = _run(args)
    except KeyboardInterrupt:
        code = 130
    if code == 130 or caught:
        print(_interrupted(args, done), file=sys.stderr)
        code = 130
    if argv is None:
        interrupts.end(code, lambda: _interrupted(args, done))
    return code


def _run(args) -> int:
    json_path = getattr(args, "json", None)
    try:
        demo = args.command == "demo" and "OMP_NUM_THREADS" not in os.environ  # too small to gain from more than one
        if (threads := 1 if args.threads is None and demo else args.threads) is not None:
            if threads < 1:
                raise CLIError(f"--threads must be >= 1, got {threads}")
            import torch
            torch.set_num_threads(threads)
        if json_path not in (None, "-"):  # before any work: an existing report is not replaced by surprise
            if Path(json_path).is_dir():
                raise CLIError(f"--json {json_path} is a folder; give a file path (or '-' for stdout)")
            from .staging import check_output
            check_output(json_path, getattr(args, "overwrite", False), folder=False)
        # with --json -: stdout carries the JSON alone; the tables go to stderr
        with contextlib.redirect_stdout(sys.stderr) if json_path == "-" else contextlib.nullcontext():
            report = args.func(args)
        if not args.done:  # a command whose output is what it printed
            args.done.append(f"the {args.command} output")
        if json_path == "-" and report is not None:
            print(json.dumps(report, indent=2, default=str))
            args.done.append("--json -")
        elif json_path and report is not None:
            from .staging import write_json
            written = write_json(report, json_path, overwrite=getattr(args, "overwrite", False))
            args.done.append(f"--json {json_path}")
            print(f"wrote {written}", file=sys.stderr)
        return 0
    except Exception as e:  # noqa: BLE001 - user errors become one line; bugs keep their traceback
        if args.traceback or not _user_error(e):
            raise
        print(f"{PROG} {args.command}: error: {_cli_names(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
