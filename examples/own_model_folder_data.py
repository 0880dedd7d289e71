"""Your own open_clip model and your own image folder: load, request, edit, evaluate, save, reload.

    python examples/own_model_folder_data.py --data PACS/ --forget-classes dog --forget-domains sketch
    python examples/own_model_folder_data.py --data my-images/ --forget-classes dog \\
        --model ViT-B-32 --pretrained vit-b-32.safetensors --method multimodal --image-size 224

``--data`` is a folder laid out as ``<root>/<domain>/<class>/<image>`` (PACS, DomainNet and
Office-Home use it); its folder names are the label space. Without ``--pretrained`` the model is
open_clip's random initialisation of ``--model``, built at ``--image-size`` (default 64 px, to keep
the run cheap on a CPU): the numbers then mean nothing, but every step runs as it would on real
weights. The edited model is written to ``--out`` as an open_clip ``local-dir:`` folder (the edit
folded in, plus ``edit.safetensors``: the edit alone) and reloaded with plain open_clip.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_unlearn import ForgetRequest, unlearn_  # noqa: E402
from lightning_unlearn.data.datasets import DomainFolderDataset  # noqa: E402
from lightning_unlearn.export import save_model_and_edit  # noqa: E402
from lightning_unlearn.zeroshot import evaluate  # noqa: E402

TEMPLATES = ["a photo of a {c}.", "a {c}."]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="image folder <root>/<domain>/<class>/<image>")
    p.add_argument("--forget-classes", nargs="*", default=[], help="classes to forget")
    p.add_argument("--forget-domains", nargs="*", default=[], help="domains to forget (or to forget the classes in)")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture")
    p.add_argument("--pretrained", help="weights file; default: random initialisation")
    p.add_argument("--image-size", type=int, default=64, help="input size to build the model at (random init)")
    p.add_argument("--method", choices=["text", "multimodal"], default="text",
                   help="'text' (prompts only, fast) or 'multimodal' (+ visual prototypes, the library default)")
    p.add_argument("--out", default="edited-model", help="folder to write the edited model to")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    # 1. load: your open_clip model (here random weights at a small input size unless --pretrained)
    size = None if args.pretrained else args.image_size
    model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=args.pretrained,
                                                                 force_image_size=size)
    model.eval()
    tokenizer = open_clip.get_tokenizer(args.model)
    model_cfg = open_clip.get_model_config(args.model)
    if size is not None:
        model_cfg["vision_cfg"]["image_size"] = size

    # 2. your data and the request: the folder names are the label space
    data = DomainFolderDataset(args.data, transform=preprocess)
    loader = torch.utils.data.DataLoader(data, batch_size=32)
    request = ForgetRequest(data.classnames, data.domains, forget_classes=args.forget_classes or None,
                            forget_domains=args.forget_domains or None)
    print(f"{len(data)} images, {len(data.classnames)} classes x {len(data.domains)} domains; {request.describe()}")

    def accuracy(m) -> dict:
        res = evaluate(m, tokenizer, data.classnames, TEMPLATES, loader, data.domains, progress=False)
        return res["cells"]

    # 3. evaluate, edit (in place), evaluate again
    before = accuracy(model)
    result = unlearn_(model, tokenizer, request, method=args.method)
    after = accuracy(model)
    print(f"edit {result.name}: {result.seconds:.2f} s")
    for cell in request.forget_cells:
        print(f"  forgotten {cell[0]} in {cell[1]}: {before[cell]:.2f} -> {after[cell]:.2f}")

    # 4. save: an open_clip local-dir folder with the edit folded in, plus the edit alone
    files = save_model_and_edit(model, model_cfg, args.out, overwrite=True)
    print(f"wrote {args.out}/: {', '.join(files)}")

    # 5. reload without this library
    reloaded, _, _ = open_clip.create_model_and_transforms(f"local-dir:{args.out}")
    again = accuracy(reloaded.eval())
    same = all(abs(again[c] - after[c]) < 1e-6 for c in after)
    print(f"reloaded local-dir:{args.out}: per-cell accuracy {'identical' if same else 'DIFFERENT'} to the edited model")
    if not same:
        raise SystemExit(1)
    return {"before": before, "after": after, "files": files}


if __name__ == "__main__":
    main()
