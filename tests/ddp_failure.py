"""Run by tests/test_bad_inputs.py (not collected by pytest): ``compute_edit_`` on 2 CPU processes
(gloo) where one rank fails while computing the edit. Every rank must raise instead of waiting in
the broadcast; each writes ``<out>/rank<r>.txt`` with the error it got. ``HOW``: "nan" (default, a
text edit on a model with a NaN) or "synthesis" (a multimodal edit whose prototype synthesis raises on
the failing rank while the other waits in a collective of the shared synthesis).

    python tests/ddp_failure.py OUT_DIR FAILING_RANK [HOW]
"""
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class GlooStrategy:
    """The part of Lightning's DDPStrategy that ``compute_edit_`` uses, on a plain gloo process group
    (same collectives: ``broadcast`` = broadcast_object_list, ``reduce_boolean_decision`` = all_reduce,
    ``all_gather`` = all_gather, stacked)."""
    root_device = torch.device("cpu")

    def __init__(self, rank: int, world_size: int):
        self.global_rank, self.world_size = rank, world_size

    def broadcast(self, obj, src: int = 0):
        box = [obj]
        dist.broadcast_object_list(box, src)
        return box[0]

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        votes = torch.tensor(int(decision))
        dist.all_reduce(votes)
        return bool(votes == self.world_size) if all else bool(votes > 0)

    def all_gather(self, tensor):
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(out, tensor)
        return torch.stack(out)


def worker(rank: int, out: Path, failing: int, how: str) -> None:
    from lightning_unlearn import ForgetRequest, UnlearnConfig, edits, embedded  # here: the parent needs none of it
    from lightning_unlearn import prototypes
    from lightning_unlearn.integration import compute_edit_
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=__import__("datetime").timedelta(seconds=60))
    emb = embedded.load_embedded()
    model = emb.model
    config = UnlearnConfig(method="text")
    if how == "synthesis":
        config = UnlearnConfig(proto_steps=2)
        if rank == failing:
            def fail(*a, **kw):
                raise RuntimeError("synthesis failed on purpose")
            prototypes.synthesize = fail
    elif rank == failing:
        with torch.no_grad():
            model.visual.proj[0, 0] = float("nan")
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    try:
        compute_edit_(model, emb.tokenizer, request, config, strategy=GlooStrategy(rank, 2))
        message = "no error"
    except Exception as e:  # noqa: BLE001 - what the test checks
        message = f"{type(e).__name__}: {e}"
    (out / f"rank{rank}.txt").write_text(f"{message}\nedits left: {len(edits(model))}\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    mp.spawn(worker, args=(out_dir, int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "nan"), nprocs=2)
