"""Reporting accuracy per (class, domain) cell: text tables, heatmap figures, and the two reports the
command line prints (the demo's three paradigms, and a zero-shot evaluation on image folders)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .state import config_dict


def pct(x) -> str:
    """An accuracy in [0, 1] as a whole percentage ("-" for None)."""
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
        b = pct(cell(before, rows, cols))
        return b if after is None else f"{b}->{pct(cell(after, rows, cols))}"

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


def cell_accuracy(result: dict) -> torch.Tensor:
    """C x D accuracy of a :func:`~lightning_unlearn.zeroshot.evaluate` result, NaN for empty cells."""
    return (result["correct"] / result["total"].clamp(min=1)).masked_fill(result["total"] == 0, float("nan"))


def grid_json(a: torch.Tensor) -> list[list[float | None]]:
    """A C x D grid as JSON lists (NaN -> null)."""
    return [[None if v != v else float(v) for v in row] for row in a.tolist()]


def cell_heatmaps(rows: list[dict], classnames, domains, path: Path) -> Path:
    """Heatmaps of per-cell accuracy before and after, one row per request; forget cells boxed. Each
    row: ``{"paradigm", "acc_before", "acc_after" (C x D), "forget_cells", "forget_acc_before", ...}``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from .staging import staged_file
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
            ax.set_title(f"{row['paradigm']}: {when} (forget {pct(row[f'forget_acc_{when}'])}%, "
                         f"retain {pct(row[f'retain_acc_{when}'])}%)", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label="zero-shot accuracy (%)")
    fig.suptitle("Zero-shot accuracy per (class, domain) cell; red boxes: forgotten cells", fontsize=10)
    with staged_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    return path


def demo(lc, config, n_per_cell: int, out: Path, batch_size: int = 256, progress: bool = True,
         prog: str = "lightning-unlearn", check: bool = False) -> dict:
    """Forget each of :data:`~lightning_unlearn.data.world.QUICK_REQUESTS` in turn on the loaded
    embedded model ``lc`` (a :class:`~lightning_unlearn.load.LoadedCLIP`), print a cell table per
    request and a summary, write ``out/demo.png`` and return the numbers as JSON data. ``check``: also
    run and print the self-check of each edit (:mod:`~lightning_unlearn.selfcheck`)."""
    from .data import QUICK_REQUESTS, rendered_batches
    from .edit import EditError, unlearned
    from .request import ForgetRequest
    from .zeroshot import evaluate, format_worst, split_accuracy, worst_cells
    t0 = time.perf_counter()
    batches = rendered_batches("test", n_per_cell, lc.preprocess, batch_size, progress)
    n_images = sum(len(b[0]) for b in batches)

    def run():
        return evaluate(lc.model, lc.tokenizer, lc.classnames, lc.templates, batches, lc.domains, progress=progress)

    before = run()
    print(f"{prog} demo: {lc.label}, {n_images} held-out test images ({n_per_cell} per cell, "
          f"{len(lc.classnames)} classes x {len(lc.domains)} domains); config: method={config.method}, "
          f"solver={config.solver}, alpha={config.alpha}\n")
    rows = []
    for paradigm, spec in QUICK_REQUESTS:
        request = ForgetRequest(lc.classnames, lc.domains, **spec)
        try:
            with unlearned(lc.model, lc.tokenizer, request, config, progress=progress, check=check) as u:
                after = run()
            refused = None
        except (ValueError, EditError) as e:  # this config cannot serve this request (e.g. text-only, whole domains)
            u, after, refused = None, before, str(e)
        sb = split_accuracy(before["correct"], before["total"], request)
        sa = split_accuracy(after["correct"], after["total"], request)
        worst = worst_cells(after["correct"], after["total"], request, before=(before["correct"], before["total"]))
        rows.append({"paradigm": paradigm, "forget": {"classes": spec.get("forget_classes"),
                                                      "domains": spec.get("forget_domains")},
                     "describe": request.describe(), "forget_cells": [list(cell) for cell in request.forget_cells],
                     "forget_acc_before": sb["forget_acc"], "forget_acc_after": sa["forget_acc"],
                     "retain_acc_before": sb["retain_acc"], "retain_acc_after": sa["retain_acc"],
                     "same_class_other_domains_acc_before": sb.get("same_class_other_domains_acc"),
                     "same_class_other_domains_acc_after": sa.get("same_class_other_domains_acc"),
                     **worst, "check": u.check.to_dict() if u and u.check else None,
                     "ranks": u.ranks if u else {}, "seconds": round(u.seconds, 2) if u else 0.0,
                     "refused": refused,
                     "acc_before": cell_accuracy(before).numpy(), "acc_after": cell_accuracy(after).numpy()})
        print(f"== {request.describe()}  " + (f"[edit: rank {u.ranks}, {u.seconds:.1f} s]" if u else
                                              f"[refused, no edit: {refused}]"))
        print(cell_table(lc.classnames, lc.domains, (before["correct"], before["total"]),
                         (after["correct"], after["total"]), request.forget_cells))
        print(f"forget accuracy {pct(sb['forget_acc'])}% -> {pct(sa['forget_acc'])}%, "
              f"retain accuracy {pct(sb['retain_acc'])}% -> {pct(sa['retain_acc'])}%\n{format_worst(worst)}")
        print((u.check.summary() + "\n") if u and u.check else "")
    out.mkdir(parents=True, exist_ok=True)
    figure = cell_heatmaps(rows, list(lc.classnames), list(lc.domains), out / "demo.png")
    width = max(len(r["paradigm"]) for r in rows)
    print(f"{'paradigm'.ljust(width)}  forget acc (%)  retain acc (%)  worst forgotten cell (%)  "
          "worst retained cell (change, points)")
    for r in rows:
        wf, wr = r["worst_forget_cell"], r["worst_retain_cell"]
        print(f"{r['paradigm'].ljust(width)}  {pct(r['forget_acc_before']):>5} -> {pct(r['forget_acc_after']):<5}"
              f"  {pct(r['retain_acc_before']):>5} -> {pct(r['retain_acc_after']):<5}"
              f"  {_cell_name(wf) + ' ' + pct(wf['acc']) if wf else '-':<24}"
              f"  {_cell_name(wr) + ' ' + format(0.0 - wr['drop_points'] + 0.0, '+.1f') if wr else '-'}")
    seconds = time.perf_counter() - t0
    print(f"\nfigure: {figure}   ({seconds:.0f} s in all)")
    keep = ("paradigm", "forget", "describe", "forget_cells", "forget_acc_before", "forget_acc_after",
            "retain_acc_before", "retain_acc_after", "same_class_other_domains_acc_before",
            "same_class_other_domains_acc_after", "worst_forget_cell", "worst_retain_cell", "check", "ranks", "seconds",
            "refused")
    return {"model": lc.label, "n_per_cell": n_per_cell, "config": config_dict(config), "figure": str(figure),
            "seconds": round(seconds, 1), "classnames": list(lc.classnames), "domains": list(lc.domains),
            "paradigms": [{k: r[k] for k in keep} | {"cells_before": grid_json(r["acc_before"]),
                                                     "cells_after": grid_json(r["acc_after"])} for r in rows]}


def _cell_name(w: dict) -> str:
    return f"{w['cell'][0]}/{w['cell'][1]}"


def evaluation(label: str, root, ds, res: dict, request=None, prog: str = "lightning-unlearn") -> dict:
    """Print the cell table of a zero-shot evaluation ``res`` of dataset ``ds`` and return it as JSON data
    (with the forget / retain split of ``request`` if given)."""
    from .zeroshot import format_worst, split_accuracy, worst_cells
    correct, total = res["correct"], res["total"]
    print(f"{prog} evaluate: {label} on {root} ({len(ds)} images, {len(ds.classnames)} classes x "
          f"{len(ds.domains)} domains); zero-shot accuracy in %")
    print(cell_table(ds.classnames, ds.domains, (correct, total), forget=request.forget_cells if request else ()))
    worst = worst_cells(correct, total, torch.zeros(tuple(correct.shape), dtype=torch.bool), ds.classnames, ds.domains)
    print(f"micro {pct(res['micro'])}%, macro {pct(res['macro'])}%" + (f"; least accurate cell "
          f"{_cell_name(worst['worst_retain_cell'])} {pct(worst['worst_retain_cell']['acc'])}%"
          if worst["worst_retain_cell"] else ""))
    report = {"model": label, "data": str(root), "n_images": len(ds), "classnames": list(ds.classnames),
              "domains": list(ds.domains), "micro": res["micro"], "macro": res["macro"],
              "per_domain": res["per_domain"],
              "per_class": {c: float(correct[i].sum() / total[i].sum().clamp(min=1))
                            for i, c in enumerate(ds.classnames) if total[i].sum() > 0},
              "cells": [{"class": c, "domain": d, "accuracy": float(correct[i, j] / total[i, j]),
                         "n": int(total[i, j])}
                        for i, c in enumerate(ds.classnames) for j, d in enumerate(ds.domains) if total[i, j] > 0],
              "worst_forget_cell": None, "worst_retain_cell": worst["worst_retain_cell"]}  # no request: every cell
    if request is not None:
        split = split_accuracy(correct, total, request) | worst_cells(correct, total, request)
        print(f"{request.describe()}: forget accuracy {pct(split['forget_acc'])}%, retain accuracy "
              f"{pct(split['retain_acc'])}%; {format_worst(split)}")
        report |= {"forget": {"classes": request.forget_classes and list(request.forget_classes),
                              "domains": request.forget_domains and list(request.forget_domains),
                              "paradigm": request.paradigm}} | split
    return report
