"""``lightning-unlearn``: forget classes, domains or (class, domain) cells of an open_clip CLIP from the shell.

Subcommands: ``demo`` (the three paradigms on the embedded world model, with tables and a figure),
``unlearn`` (write an edited model as an open_clip ``local-dir:`` folder plus a small edit
artifact), ``evaluate`` (zero-shot accuracy per (class, domain) on ``root/<domain>/<class>/``
image folders) and ``export`` (a Lightning checkpoint of ``CLIPUnlearning`` to an open_clip
folder). Bad input ends with a one-line message on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import pickle
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROG = "lightning-unlearn"
#: The demo's fixed requests, one per paradigm, on the embedded world (10 shapes x 4 styles): the
#: same requests as ``benchmarks/unlearning.py --quick`` (README "Results" has every class and domain).
DEMO_REQUESTS = (
    ("global", {"forget_classes": ["star"]}),  # "star" in every domain
    ("domain-specific", {"forget_classes": ["star"], "forget_domains": ["sketch"]}),  # only sketched stars
    ("domain", {"forget_domains": ["painting"]}),  # every class in the painting domain
)
DEMO_N_PER_CELL = 25
#: API argument names as the command line spells them (for library error messages).
_OPTION_NAMES = {"`forget_classes`": "--forget-classes", "`forget_domains`": "--forget-domains",
                 "`classnames`": "--classnames", "`domains`": "--domains"}


class CLIError(Exception):
    """Bad input: printed as one line on stderr, exit code 2."""


# ---------------------------------------------------------------------------------------------- helpers
def parse_names(value: str | None, option: str) -> tuple[str, ...] | None:
    """A comma-separated list, or ``@file`` with one name per line (blank lines and ``#`` comments skipped)."""
    if value is None:
        return None
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise CLIError(f"{option}: names file {path} does not exist" if not path.exists()
                           else f"{option}: {path} is not a file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CLIError(f"{option}: cannot read names file {path}: {e}") from e
        names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if not names:
            raise CLIError(f"{option}: names file {path} is empty; put one name per line")
        return tuple(names)
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise CLIError(f"{option} is empty; give a comma-separated list such as 'cat,dog', or @file with one name "
                       "per line")
    return tuple(names)


def _cli_names(message: str) -> str:
    for api, opt in _OPTION_NAMES.items():
        message = message.replace(api, opt)
    return message


def _request(classnames, domains, forget_classes, forget_domains):
    from .request import ForgetRequest, RequestError
    try:
        return ForgetRequest(classnames, domains, forget_classes=forget_classes, forget_domains=forget_domains)
    except RequestError as e:
        raise CLIError(_cli_names(str(e))) from e


def _config(args):
    from .edit import UnlearnConfig
    overrides = {k: v for k, v in (("method", args.method), ("alpha", args.alpha)) if v is not None}
    try:
        return UnlearnConfig(**overrides)
    except ValueError as e:
        raise CLIError(_cli_names(str(e)).replace("`method`", "--method").replace("`alpha`", "--alpha")) from e


def _check_output(out: Path, overwrite: bool) -> None:
    from .export import check_output
    try:
        check_output(out, overwrite)
    except (FileExistsError, NotADirectoryError) as e:
        raise CLIError(str(e).replace("pass overwrite=True (--overwrite on the command line)",
                                      "pass --overwrite")) from e


def _write_json(obj, path: str) -> None:
    from .export import write_json
    if path == "-":
        print(json.dumps(obj, indent=2, default=str))
    else:
        write_json(obj, path)
        print(f"wrote {path}", file=sys.stderr)


def _keys_from_torch_error(message: str) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, size mismatches) named in a torch ``load_state_dict`` error."""
    def quoted(label):
        m = re.search(label + r" key\(s\) in state_dict: (.*)", message)
        return re.findall(r'"([^"]+)"', m.group(1)) if m else []
    shapes = [f"{k} (checkpoint {a}, model {b})" for k, a, b in re.findall(
        r"size mismatch for ([\w.\-]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
        r"the shape in current model is torch\.Size\((\[[^\]]*\])\)", message)]
    return quoted("Missing"), quoted("Unexpected"), shapes


def _unpickling_error(path: Path, e: Exception, hint: str | None = None) -> CLIError:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    if found:
        return CLIError(f"refusing to load {path}: it holds Python objects besides tensors ({found.group(1)}), and "
                        "checkpoints are read with torch.load(weights_only=True) so that loading cannot run code; "
                        + (hint or "save a plain state_dict (torch.save(model.state_dict(), ...)) or a safetensors "
                                   "file"))
    return CLIError(f"cannot read {path}: it is not a torch checkpoint or safetensors file, or it is damaged")


# ---------------------------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    model: object
    preprocess: object
    tokenizer: object
    model_cfg: dict
    label: str
    embedded: bool = False
    classnames: tuple | None = None
    domains: tuple | None = None
    templates: tuple = field(default_factory=tuple)


def _is_embedded(args) -> bool:
    from .embedded import MODEL_NAME
    if getattr(args, "embedded", False) and args.model is not None:
        raise CLIError("give either --embedded or --model, not both")
    return args.model is None or args.model == MODEL_NAME


def _check_weights_file(path: Path) -> Path:
    if not path.exists():
        raise CLIError(f"weights file {path} does not exist")
    if not path.is_file():
        raise CLIError(f"weights path {path} is a folder; give a .safetensors or torch checkpoint file "
                       "(or a model folder as --model local-dir:DIR)")
    return path


def load_weights(model, path: Path, name: str) -> None:
    """Load ``path`` into ``model`` (safetensors, or torch.load with weights_only=True) and raise a
    :class:`CLIError` naming the keys if it does not fit."""
    import open_clip
    try:
        incompatible = open_clip.load_checkpoint(model, str(path), strict=False, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _unpickling_error(path, e) from e
    except RuntimeError as e:
        missing, unexpected, shapes = _keys_from_torch_error(str(e))
        if shapes or missing or unexpected:
            from .export import describe_key_mismatch
            missing, unexpected, shapes = _diff_keys(model, path, (missing, unexpected, shapes))
            raise CLIError(f"weights {path} do not fit {name}: "
                           + describe_key_mismatch(missing, unexpected, shapes)) from e
        raise CLIError(f"cannot read weights {path}: {str(e).splitlines()[0]}") from e
    except StopIteration as e:
        raise CLIError(f"weights file {path} holds no tensors") from e
    except Exception as e:  # noqa: BLE001 - safetensors, zipfile, EOF ... all mean "unreadable"
        raise CLIError(f"cannot read weights {path} ({type(e).__name__}: {e}); expected a .safetensors file or a "
                       "torch checkpoint holding a state_dict") from e
    missing, unexpected = list(incompatible.missing_keys), list(incompatible.unexpected_keys)
    if missing or unexpected:
        from .export import describe_key_mismatch
        if unexpected and all(k.startswith("model.") for k in unexpected):
            raise CLIError(f"weights {path} look like a Lightning checkpoint (their keys sit under 'model.'): convert "
                           f"it with `{PROG} export {path} --output DIR` and load DIR with --model local-dir:DIR ("
                           + describe_key_mismatch(missing, unexpected, limit=3) + ")")
        raise CLIError(f"weights {path} do not match {name}: " + describe_key_mismatch(missing, unexpected))


def _diff_keys(model, path: Path, fallback):
    """(missing, unexpected, shape mismatches) of the file's tensors against ``model`` (a non-strict load
    stops at the first shape mismatch and names nothing else)."""
    from open_clip.factory import load_state_dict
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception:  # noqa: BLE001 - keep what the load error named
        return fallback
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    shapes = [f"{k} (checkpoint {list(theirs[k])}, model {list(ours[k])})" for k in ours
              if k in theirs and theirs[k] != ours[k]]
    return sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours)), shapes


def _find_weights_in(folder: Path) -> Path:
    from .export import WEIGHTS_NAME
    preferred = [WEIGHTS_NAME, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                 "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "model.pth"]
    for name in preferred:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pth"))
    found = [p for p in found if p.name != "edit.safetensors"]
    if not found:
        raise CLIError(f"model folder {folder} has no weights file (expected {WEIGHTS_NAME})")
    return found[0]


def _build(name: str, device: str):
    import open_clip
    from .export import quiet_open_clip
    try:
        with quiet_open_clip():
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, load_weights=False,
                                                                         device=device)
    except Exception as e:  # noqa: BLE001 - a bad model_cfg surfaces as many types
        raise CLIError(f"open_clip cannot build {name}: {type(e).__name__}: {e}") from e
    return model, preprocess, open_clip.get_tokenizer(name)


def load_model(args) -> LoadedModel:
    """The model the ``--model`` / ``--pretrained`` / ``--embedded`` options name, in eval mode."""
    import open_clip
    from . import embedded
    from .prompts import CLASS_TEMPLATES
    device = getattr(args, "device", "cpu")
    pretrained = getattr(args, "pretrained", None)
    if _is_embedded(args):
        weights = _check_weights_file(Path(pretrained) if pretrained else embedded.WEIGHTS_PATH)
        try:
            e = embedded.load_embedded(weights, device=device)
        except Exception as ex:  # noqa: BLE001 - rebuild to name what does not fit
            model, _, _ = _build(embedded.register(), device)
            load_weights(model, weights, embedded.MODEL_NAME)
            raise CLIError(f"cannot load the embedded model from {weights}: {type(ex).__name__}: {ex}") from ex
        label = embedded.MODEL_NAME + ("" if pretrained is None else f" ({weights})")
        return LoadedModel(e.model, e.preprocess, e.tokenizer, open_clip.get_model_config(embedded.MODEL_NAME), label,
                           True, e.classnames, e.domains, tuple(e.templates))
    name = args.model
    if name.startswith("local-dir:"):
        from .export import read_local_dir_config
        if pretrained:
            raise CLIError("--pretrained is not used with --model local-dir:DIR (the folder holds its weights)")
        folder = Path(name[len("local-dir:"):])
        try:
            config = read_local_dir_config(folder)
        except (FileNotFoundError, ValueError) as ex:
            raise CLIError(str(ex)) from ex
        weights = _find_weights_in(folder)
        model, preprocess, tokenizer = _build(f"local-dir:{folder}", device)
        load_weights(model, weights, name)
        model_cfg = config["model_cfg"]
    else:
        embedded.register()
        known = open_clip.list_models()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            raise CLIError(f"unknown --model {name!r}" + (f"; did you mean {close}?" if close else "")
                           + " (`python -c 'import open_clip; print(open_clip.list_models())'` lists them, or give "
                           "local-dir:DIR)")
        if not pretrained:
            raise CLIError(f"--model {name} needs --pretrained PATH (a weights file); an architecture alone has "
                           "random weights")
        model, preprocess, tokenizer = _build(name, device)
        load_weights(model, _check_weights_file(Path(pretrained)), name)
        model_cfg = open_clip.get_model_config(name)
    model.eval()
    return LoadedModel(model, preprocess, tokenizer, model_cfg, name, templates=CLASS_TEMPLATES)


def _names_and_domains(args, lm_is_embedded: bool) -> tuple[tuple, tuple]:
    from .data.world import CLASSES, DOMAINS
    classnames = parse_names(args.classnames, "--classnames")
    domains = parse_names(args.domains, "--domains")
    if classnames is None:
        if not lm_is_embedded:
            raise CLIError("--classnames is required with --model (the embedded default knows its own): give a comma "
                           "list or @file with one class name per line")
        classnames = CLASSES
    return classnames, domains or DOMAINS


# ---------------------------------------------------------------------------------------------- tables
def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}"


def cell_table(classnames, domains, before, after=None, forget=()) -> str:
    """A class x domain table of accuracies (``before`` / ``after``: ``(correct, total)`` C x D counts),
    with per-class and per-domain totals; ``forget`` cells are starred."""
    forget = set(map(tuple, forget))

    def cell(counts, rows, cols):
        correct, total = counts
        n = int(total[rows][:, cols].sum())
        return None if n == 0 else float(correct[rows][:, cols].sum()) / n

    def fmt(rows, cols):
        b = _pct(cell(before, rows, cols))
        return b if after is None else f"{b}->{_pct(cell(after, rows, cols))}"

    C, D = range(len(classnames)), range(len(domains))
    header = ["class"] + list(domains) + ["all"]
    body = []
    for i, c in enumerate(classnames):
        body.append([c] + [fmt([i], [j]) + ("*" if (c, d) in forget else "") for j, d in enumerate(domains)]
                    + [fmt([i], list(D))])
    body.append(["all"] + [fmt(list(C), [j]) for j in D] + [fmt(list(C), list(D))])
    widths = [max(len(r[k]) for r in [header] + body) for k in range(len(header))]
    def line(r):
        return "  ".join(v.ljust(widths[0]) if k == 0 else v.rjust(widths[k]) for k, v in enumerate(r))
    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body]
    if forget:
        out.append("(* = forget cell; accuracy in %" + (", before->after)" if after is not None else ")"))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- demo
def demo_figure(rows: list[dict], classnames, domains, path: Path) -> Path:
    """Heatmaps of per-cell accuracy before and after, one row per paradigm; forget cells boxed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from .export import staged_file
    fig = Figure(figsize=(2.2 + 1.3 * len(domains) * 2, 1.0 + 0.3 * len(classnames) * len(rows)), dpi=110,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 2, squeeze=False)
    image = None
    for r, row in enumerate(rows):
        for k, when in enumerate(("before", "after")):
            ax, acc = axes[r][k], row[f"acc_{when}"]
            image = ax.imshow(100 * acc, vmin=0, vmax=100, cmap="viridis", aspect="auto")
            for i in range(len(classnames)):
                for j in range(len(domains)):
                    v = acc[i, j]
                    if v == v:  # not NaN
                        ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                                color="white" if v < 0.6 else "black")
            for c, d in row["forget_cells"]:
                ax.add_patch(Rectangle((domains.index(d) - 0.5, classnames.index(c) - 0.5), 1, 1, fill=False,
                                       edgecolor="red", linewidth=2))
            ax.set_xticks(range(len(domains)), domains, fontsize=8)
            ax.set_yticks(range(len(classnames)), classnames, fontsize=8)
            ax.set_title(f"{row['paradigm']}: {when} (forget {_pct(row[f'forget_acc_{when}'])}%, "
                         f"retain {_pct(row[f'retain_acc_{when}'])}%)", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label="zero-shot accuracy (%)")
    fig.suptitle("Zero-shot accuracy per (class, domain) cell; red boxes: forgotten cells", fontsize=10)
    with staged_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _render(world, preprocess, progress: bool):
    import torch
    from tqdm.auto import tqdm
    xs, cs, ds = [], [], []
    for i in tqdm(range(len(world)), desc="render test world", disable=not progress, leave=False):
        s = world[i]
        xs.append(preprocess(s.image))
        cs.append(s.cls)
        ds.append(s.domain)
    return torch.stack(xs), torch.tensor(cs), torch.tensor(ds)


def cmd_demo(args) -> dict:
    from .data.world import World
    from .edit import restore_, unlearn_
    from .zeroshot import evaluate, split_accuracy
    t0 = time.perf_counter()
    if args.n_per_cell < 1:
        raise CLIError(f"--n-per-cell must be >= 1, got {args.n_per_cell}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; give a folder for the figure")
    cfg = _config(args)
    progress = not args.no_progress
    args.model, args.embedded = None, True
    lm = load_model(args)
    world = World("test", n_per_cell=args.n_per_cell)
    x, c, d = _render(world, lm.preprocess, progress)
    batches = [(x[i:i + args.batch_size], c[i:i + args.batch_size], d[i:i + args.batch_size])
               for i in range(0, len(x), args.batch_size)]
    def run():
        return evaluate(lm.model, lm.tokenizer, lm.classnames, lm.templates, batches, lm.domains, progress=progress)

    def acc(r):  # C x D accuracy, NaN for empty cells
        return (r["correct"] / r["total"].clamp(min=1)).masked_fill(r["total"] == 0, float("nan"))

    before = run()
    print(f"{PROG} demo: {lm.label}, {len(world)} held-out test images ({args.n_per_cell} per cell, "
          f"{len(lm.classnames)} classes x {len(lm.domains)} domains); config: method={cfg.method}, "
          f"solver={cfg.solver}, alpha={cfg.alpha}\n")
    rows = []
    for paradigm, spec in DEMO_REQUESTS:
        request = _request(lm.classnames, lm.domains, spec.get("forget_classes"), spec.get("forget_domains"))
        u = unlearn_(lm.model, lm.tokenizer, request, cfg, progress=progress)
        try:
            after = run()
        finally:
            restore_(lm.model)
        sb = split_accuracy(before["correct"], before["total"], request)
        sa = split_accuracy(after["correct"], after["total"], request)
        rows.append({"paradigm": paradigm, "forget": {"classes": spec.get("forget_classes"),
                                                      "domains": spec.get("forget_domains")},
                     "describe": request.describe(), "forget_cells": [list(cell) for cell in request.forget_cells],
                     "forget_acc_before": sb["forget_acc"], "forget_acc_after": sa["forget_acc"],
                     "retain_acc_before": sb["retain_acc"], "retain_acc_after": sa["retain_acc"],
                     "same_class_other_domains_acc_before": sb.get("same_class_other_domains_acc"),
                     "same_class_other_domains_acc_after": sa.get("same_class_other_domains_acc"),
                     "ranks": u.ranks, "seconds": round(u.seconds, 2),
                     "acc_before": acc(before).numpy(), "acc_after": acc(after).numpy()})
        print(f"== {request.describe()}  [edit: rank {u.ranks}, {u.seconds:.1f} s]")
        print(cell_table(lm.classnames, lm.domains, (before["correct"], before["total"]),
                         (after["correct"], after["total"]), request.forget_cells))
        print(f"forget accuracy {_pct(sb['forget_acc'])}% -> {_pct(sa['forget_acc'])}%, "
              f"retain accuracy {_pct(sb['retain_acc'])}% -> {_pct(sa['retain_acc'])}%\n")
    out.mkdir(parents=True, exist_ok=True)
    figure = demo_figure(rows, list(lm.classnames), list(lm.domains), out / "demo.png")
    width = max(len(r["paradigm"]) for r in rows)
    print(f"{'paradigm'.ljust(width)}  forget acc (%)  retain acc (%)")
    for r in rows:
        print(f"{r['paradigm'].ljust(width)}  {_pct(r['forget_acc_before']):>5} -> {_pct(r['forget_acc_after']):<5}"
              f"  {_pct(r['retain_acc_before']):>5} -> {_pct(r['retain_acc_after']):<5}")
    seconds = time.perf_counter() - t0
    print(f"\nfigure: {figure}   ({seconds:.0f} s in all)")
    keep = ("paradigm", "forget", "describe", "forget_cells", "forget_acc_before", "forget_acc_after",
            "retain_acc_before", "retain_acc_after", "same_class_other_domains_acc_before",
            "same_class_other_domains_acc_after", "ranks", "seconds")
    grid = lambda a: [[None if v != v else float(v) for v in row] for row in a.tolist()]  # noqa: E731 (NaN -> null)
    return {"model": lm.label, "n_per_cell": args.n_per_cell, "config": asdict(cfg), "figure": str(figure),
            "seconds": round(seconds, 1), "classnames": list(lm.classnames), "domains": list(lm.domains),
            "paradigms": [{k: r[k] for k in keep} | {"cells_before": grid(r["acc_before"]),
                                                     "cells_after": grid(r["acc_after"])} for r in rows]}


# ---------------------------------------------------------------------------------------------- unlearn
def cmd_unlearn(args) -> dict:
    from .edit import unlearn_
    from .export import EDIT_NAME, save_edit, staged_dir, write_folded_into
    out = Path(args.output)
    _check_output(out, args.overwrite)
    is_embedded = _is_embedded(args)
    classnames, domains = _names_and_domains(args, is_embedded)
    forget_classes = parse_names(args.forget_classes, "--forget-classes")
    forget_domains = parse_names(args.forget_domains, "--forget-domains")
    request = _request(classnames, domains, forget_classes, forget_domains)
    cfg = _config(args)
    lm = load_model(args)
    print(f"{PROG} unlearn: {lm.label}; {request.describe()}", file=sys.stderr)
    u = unlearn_(lm.model, lm.tokenizer, request, cfg, progress=not args.no_progress)
    with staged_dir(out, args.overwrite) as tmp:
        write_folded_into(tmp, lm.model, lm.model_cfg)
        save_edit(lm.model, tmp / EDIT_NAME)
    files = sorted(p.name for p in out.iterdir())
    print(f"forgot {request.describe()} in {u.seconds:.1f} s (removed rank {u.ranks})")
    print(f"wrote {out}/: {', '.join(files)}")
    print(f"load it with open_clip.create_model_and_transforms('local-dir:{out}'), or re-apply the edit alone to "
          f"the original model with lightning_unlearn.export.apply_edit(model, '{out / EDIT_NAME}')")
    return {"model": lm.label, "request": request.to_dict(), "paradigm": request.paradigm,
            "config": asdict(u.config), "ranks": u.ranks, "seconds": round(u.seconds, 3), "output": str(out),
            "files": files}


# ---------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> dict:
    import torch
    from .data.datasets import DomainFolderDataset
    from .zeroshot import evaluate, split_accuracy
    classnames = parse_names(args.classnames, "--classnames")
    domains = parse_names(args.domains, "--domains")
    root = Path(args.data)
    if not root.is_dir():
        raise CLIError(f"--data {root} does not exist" if not root.exists()
                       else f"--data {root} is a file; give a folder laid out as <root>/<domain>/<class>/<image>")
    try:
        ds = DomainFolderDataset(root, domains=domains, classnames=classnames)
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from e
    forget_classes = parse_names(args.forget_classes, "--forget-classes")
    forget_domains = parse_names(args.forget_domains, "--forget-domains")
    request = None
    if forget_classes or forget_domains:
        request = _request(ds.classnames, ds.domains, forget_classes, forget_domains)
    if args.audit and request is None:
        raise CLIError("--audit needs the forgotten cells: add --forget-classes and/or --forget-domains")
    lm = load_model(args)
    ds.transform = lm.preprocess
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers)
    res = evaluate(lm.model, lm.tokenizer, ds.classnames, lm.templates, loader, ds.domains,
                   progress=not args.no_progress)
    correct, total = res["correct"], res["total"]
    print(f"{PROG} evaluate: {lm.label} on {root} ({len(ds)} images, {len(ds.classnames)} classes x "
          f"{len(ds.domains)} domains); zero-shot accuracy in %")
    print(cell_table(ds.classnames, ds.domains, (correct, total), forget=request.forget_cells if request else ()))
    print(f"micro {_pct(res['micro'])}%, macro {_pct(res['macro'])}%")
    report = {"model": lm.label, "data": str(root), "n_images": len(ds), "classnames": list(ds.classnames),
              "domains": list(ds.domains), "micro": res["micro"], "macro": res["macro"],
              "per_domain": res["per_domain"],
              "per_class": {c: float(correct[i].sum() / total[i].sum().clamp(min=1))
                            for i, c in enumerate(ds.classnames) if total[i].sum() > 0},
              "cells": [{"class": c, "domain": d, "accuracy": float(correct[i, j] / total[i, j]),
                         "n": int(total[i, j])}
                        for i, c in enumerate(ds.classnames) for j, d in enumerate(ds.domains) if total[i, j] > 0]}
    if request is not None:
        split = split_accuracy(correct, total, request)
        print(f"{request.describe()}: forget accuracy {_pct(split['forget_acc'])}%, retain accuracy "
              f"{_pct(split['retain_acc'])}%")
        report |= {"forget": {"classes": request.forget_classes and list(request.forget_classes),
                              "domains": request.forget_domains and list(request.forget_domains),
                              "paradigm": request.paradigm}} | split
    if args.audit:
        from .audit import AuditError, audit_dataset, format_audit
        try:
            report["audit"] = audit_dataset(lm.model, lm.tokenizer, request, ds, batch_size=args.batch_size,
                                            num_workers=args.workers, templates=lm.templates)
        except AuditError as e:
            raise CLIError(f"--audit: {e}") from e
        print(f"depth audit of the forgotten cells (probes fitted on half of each cell, scored on the other half):\n"
              f"{format_audit(report['audit'])}")
    return report


# ---------------------------------------------------------------------------------------------- export
def _model_cfg_for_export(module, model, name: str | None) -> dict:
    """The architecture of the checkpoint's model: ``--model``, else what the module recorded, else the
    embedded architecture if the weights fit it exactly."""
    import open_clip
    from . import embedded
    from .export import read_local_dir_config
    embedded.register()

    def by_name(n: str) -> dict:
        if n.startswith("local-dir:"):
            try:
                return read_local_dir_config(n[len("local-dir:"):])["model_cfg"]
            except (FileNotFoundError, ValueError) as e:
                raise CLIError(str(e)) from e
        cfg = open_clip.get_model_config(n)
        if cfg is None:
            close = difflib.get_close_matches(n, open_clip.list_models(), n=3, cutoff=0.5)
            raise CLIError(f"unknown --model {n!r}" + (f"; did you mean {close}?" if close else ""))
        return cfg
    if name:
        return by_name(name)
    for attr in ("model_cfg",):
        cfg = getattr(module, attr, None)
        if isinstance(cfg, dict):
            return cfg
    hparams = dict(getattr(module, "hparams", {}) or {})
    if isinstance(hparams.get("model_cfg"), dict):
        return hparams["model_cfg"]
    for key in ("arch", "model_name", "model", "architecture"):
        if isinstance(hparams.get(key), str):
            return by_name(hparams[key])
    if "arch" in hparams and hparams["arch"] is None and hparams.get("weights") is None:
        return by_name(embedded.MODEL_NAME)  # CLIPUnlearning's default: the embedded model
    ref = open_clip.get_model_config(embedded.MODEL_NAME)
    from .export import quiet_open_clip
    import torch
    with quiet_open_clip(), torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in open_clip.create_model(
            embedded.MODEL_NAME, load_weights=False, device="meta").state_dict().items()}
    if shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()}:
        return ref
    raise CLIError("cannot tell the checkpoint's architecture (the module records no model name); pass --model "
                   "NAME or --model local-dir:DIR")


_EXPORT_HINT = ("a CLIPUnlearning checkpoint holds only tensors and plain values, so this one was written by "
                "another module (or with objects in its hyper-parameters)")


def cmd_export(args) -> dict:
    import torch
    from .edit import edits
    from .export import EDIT_NAME, save_edit, staged_dir, write_folded_into
    ckpt, out = Path(args.checkpoint), Path(args.output)
    if not ckpt.is_file():
        raise CLIError(f"checkpoint {ckpt} does not exist" if not ckpt.exists() else f"checkpoint {ckpt} is not a file")
    _check_output(out, args.overwrite)
    try:
        raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _unpickling_error(ckpt, e, _EXPORT_HINT) from e
    except Exception as e:  # noqa: BLE001 - zipfile / EOF / OS errors: unreadable
        raise CLIError(f"cannot read checkpoint {ckpt} ({type(e).__name__}: {e})") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict):
        raise CLIError(f"{ckpt} is not a Lightning checkpoint (no 'state_dict' entry); for plain open_clip weights "
                       f"use `{PROG} unlearn --model NAME --pretrained {ckpt}`")
    del raw
    try:
        from .module import CLIPUnlearning  # imports Lightning: only this subcommand needs it
    except ImportError as e:
        raise CLIError(f"export needs Lightning and lightning_unlearn.module: {e}") from e
    try:
        module = CLIPUnlearning.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _unpickling_error(ckpt, e, _EXPORT_HINT) from e
    except RuntimeError as e:
        missing, unexpected, shapes = _keys_from_torch_error(str(e))
        if missing or unexpected or shapes:
            from .export import describe_key_mismatch
            raise CLIError(f"{ckpt} does not match CLIPUnlearning: "
                           + describe_key_mismatch(missing, unexpected, shapes)) from e
        raise CLIError(f"cannot restore CLIPUnlearning from {ckpt}: {str(e).splitlines()[0]}") from e
    except Exception as e:  # noqa: BLE001 - hyperparameters that no longer fit the class, ...
        raise CLIError(f"cannot restore CLIPUnlearning from {ckpt}: {type(e).__name__}: {e}") from e
    model = module.folded_model()
    model_cfg = _model_cfg_for_export(module, model, args.model)
    edited = getattr(module, "clip", None)  # CLIPUnlearning keeps the edited model (edit not folded) as .clip
    with staged_dir(out, args.overwrite) as tmp:
        try:
            write_folded_into(tmp, model, model_cfg)
        except ValueError as e:
            raise CLIError(f"{ckpt}: {e}") from e
        if isinstance(edited, torch.nn.Module) and edits(edited):
            save_edit(edited, tmp / EDIT_NAME)
    files = sorted(p.name for p in out.iterdir())
    print(f"wrote {out}/: {', '.join(files)}; load it with open_clip.create_model_and_transforms('local-dir:{out}')")
    return {"checkpoint": str(ckpt), "output": str(out), "files": files}


# ---------------------------------------------------------------------------------------------- parser
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description/epilog layout; appends "(default: X)" only for meaningful defaults."""

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


def _forget_options(p: argparse.ArgumentParser, required_note: str) -> None:
    g = p.add_argument_group(f"forget request ({required_note}; comma list or @file, one name per line)")
    g.add_argument("--forget-classes", metavar="NAMES", help="classes to forget (in every domain unless "
                   "--forget-domains is also given)")
    g.add_argument("--forget-domains", metavar="NAMES", help="domains to forget (every class, or only "
                   "--forget-classes in them)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="Training- and data-free unlearning for open_clip CLIP models: forget classes, whole domains "
                    "or classes in some domains, by a closed-form edit of the projection.",
        epilog=f"""examples:
  {PROG} demo                                   # the three paradigms on the embedded model
  {PROG} unlearn --forget-classes star -o no-star
  {PROG} evaluate --model local-dir:no-star --data pacs/ --forget-classes star
  {PROG} export runs/last.ckpt -o exported

run `{PROG} COMMAND --help` for the options and examples of each command.""")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: 1 for demo, else "
                        "torch's choice of one per core; on a machine busy with other jobs fewer can be much faster)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", formatter_class=_Formatter, help="run the three paradigms on the embedded model",
                       description="""On the embedded world model, forget one request per paradigm and show
zero-shot accuracy per (class, domain) cell of the held-out test world before and after:

  global           forget "star" in every domain
  domain-specific  forget "star" only in "sketch" (stars in other domains are kept)
  domain           forget every class in "painting"

Each edit is computed with the library's default UnlearnConfig (override with --method / --alpha)
and removed again before the next. Prints a class x domain table per paradigm and writes
demo.png (heatmaps before/after, one row per paradigm) into --out.""",
                       epilog=f"""examples:
  {PROG} demo
  {PROG} demo --n-per-cell 10 --out /tmp/demo --json demo.json
  {PROG} --threads 2 demo          # torch threads (default for the demo: 1)""")
    p.add_argument("--n-per-cell", type=int, default=DEMO_N_PER_CELL, metavar="N",
                   help="test images per (class, domain) cell")
    p.add_argument("--out", default="unlearn-demo", metavar="DIR", help="folder for demo.png")
    p.add_argument("--json", metavar="PATH", help="write the numbers as JSON ('-' for stdout)")
    p.add_argument("--pretrained", metavar="PATH",
                   help="weights for the embedded architecture (default: the shipped ones)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _method_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("unlearn", formatter_class=_Formatter, help="edit a model and save it (folded) plus the edit",
                       description="""Compute the edit that forgets a request, and write --output as an open_clip
local-dir folder: open_clip_config.json + open_clip_model.safetensors (the edit folded in) and
edit.safetensors + edit.json (the edit alone, re-appliable to the original model with
lightning_unlearn.export.apply_edit, which checks a fingerprint of the original weights).""",
                       epilog=f"""examples:
  {PROG} unlearn --forget-classes star -o no-star
  {PROG} unlearn --forget-classes heart --forget-domains sketch -o no-sketched-hearts --json info.json
  {PROG} unlearn --model ViT-B-32 --pretrained vit-b-32.safetensors --classnames @classes.txt \\
      --domains photo,art_painting,cartoon,sketch --forget-domains art_painting -o vit-no-paintings
  {PROG} unlearn --model local-dir:no-star --forget-classes moon --classnames @classes.txt -o no-star-no-moon""")
    _model_options(p)
    g = p.add_argument_group("label space (comma list or @file, one name per line)")
    g.add_argument("--classnames", metavar="NAMES", help="all class names (default for the embedded model: its 10 "
                   "shapes; required otherwise)")
    g.add_argument("--domains", metavar="NAMES", help="all domain names (default: photo,sketch,cartoon,painting)")
    _forget_options(p, "at least one")
    _method_options(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--json", metavar="PATH", help="write a JSON report ('-' for stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_unlearn)

    p = sub.add_parser("evaluate", formatter_class=_Formatter, help="zero-shot accuracy per (class, domain) on folders",
                       description="""Zero-shot accuracy of a model on images laid out as
<root>/<domain>/<class>/<image> (PACS, DomainNet, Office-Home, or `write_world`), per (class, domain) cell. With
--forget-classes / --forget-domains, also the accuracy on the forget and retain cells.""",
                       epilog=f"""examples:
  {PROG} evaluate --data world-test/
  {PROG} evaluate --model local-dir:no-star --data world-test/ --forget-classes star --json eval.json
  {PROG} evaluate --model ViT-B-32 --pretrained vit-b-32.safetensors --data PACS/ --domains photo,sketch""")
    _model_options(p)
    p.add_argument("--data", required=True, metavar="ROOT", help="image folder root/<domain>/<class>/<image>")
    g = p.add_argument_group("label space (default: the folder names; comma list or @file)")
    g.add_argument("--classnames", metavar="NAMES", help="classes to use, in this order (a subset of the folders)")
    g.add_argument("--domains", metavar="NAMES", help="domains to use, in this order (a subset of the folders)")
    _forget_options(p, "optional")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--audit", action="store_true", help="also audit the forgotten cells in depth (linear probes, "
                   "k-NN, paraphrased prompts, retrieval; fitted on half of each cell, scored on the other half)")
    p.add_argument("--json", metavar="PATH", help="write the numbers as JSON ('-' for stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", formatter_class=_Formatter, help="Lightning checkpoint -> open_clip folder",
                       description="""Turn a Lightning checkpoint of lightning_unlearn.module.CLIPUnlearning into a
folded open_clip local-dir folder (plus edit.safetensors when the module's model carries edits). The
checkpoint is read with weights_only=True.""",
                       epilog=f"""examples:
  {PROG} export runs/version_0/checkpoints/last.ckpt -o exported
  {PROG} export last.ckpt -o exported --model ViT-B-32 --overwrite""")
    p.add_argument("checkpoint", metavar="CKPT", help="Lightning .ckpt of CLIPUnlearning")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write (must not exist)")
    p.add_argument("--model", metavar="NAME", help="architecture name or local-dir:DIR, if the checkpoint does not "
                   "record it")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.set_defaults(func=cmd_export)
    return parser


def _user_error(e: BaseException) -> bool:
    from .edit import EditError
    from .request import RequestError
    from .targets import UnsupportedModelError
    return isinstance(e, (CLIError, RequestError, EditError, UnsupportedModelError, FileNotFoundError,
                          FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    json_path = getattr(args, "json", None)
    try:
        threads = args.threads
        if threads is None and args.command == "demo" and "OMP_NUM_THREADS" not in os.environ:
            threads = 1  # the embedded model is too small to gain from more; one never oversubscribes a busy CPU
        if threads is not None:
            if threads < 1:
                raise CLIError(f"--threads must be >= 1, got {threads}")
            import torch
            torch.set_num_threads(threads)
        if json_path not in (None, "-") and Path(json_path).is_dir():
            raise CLIError(f"--json {json_path} is a folder; give a file path (or '-' for stdout)")
        if json_path == "-":  # stdout carries the JSON alone; the tables go to stderr
            with contextlib.redirect_stdout(sys.stderr):
                report = args.func(args)
        else:
            report = args.func(args)
        if json_path and report is not None:
            _write_json(report, json_path)
        return 0
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - user errors become one line; bugs keep their traceback
        if args.traceback or not _user_error(e):
            raise
        print(f"{PROG} {args.command}: error: {_cli_names(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
