import sys, time, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from benchmarks.deep_research.common import *
from lightning_unlearn import ForgetRequest, unlearn_, restore_
from lightning_unlearn.embedded import load_embedded
from lightning_unlearn.zeroshot import classifier
from lightning_unlearn.directions import cell_texts, class_texts
from lightning_unlearn import prototypes as protos
torch.manual_seed(0)
emb = load_embedded(); model = emb.model
cache = load()
T = classifier(model, emb.tokenizer, emb.classnames, emb.templates)
Tc = classifier(model, emb.tokenizer, emb.colours, emb.colour_templates)
cells = [(c, d) for c in emb.classnames for d in emb.domains]
Tcell = cell_texts(model, emb.tokenizer, cells, emb.cell_templates)
t0 = time.time()
p = protos.synthesize(model, Tcell, n_per_text=4, steps=int(sys.argv[1]), classes=T.T, progress=False)
print("proto s", time.time() - t0, p.steps)
with torch.no_grad():
    Hp = model.encode_image(protos.normalise_images(model, p.images.flatten(0, 1))).float()
yp = torch.tensor([(i // 4 // 4, i // 4 % 4) for i in range(len(Hp))])
Hval = cache["val"]["pooled"] @ cache["proj"]
# proto quality: zero-shot acc and stats distance per cell
pred = (F.normalize(Hp, dim=-1) @ T).argmax(1)
print("proto zs acc", float((pred == yp[:, 0]).float().mean()))
mv = torch.stack([Hval[(cache['val']['y'][:, 0] == c) & (cache['val']['y'][:, 1] == d)].mean(0) for c in range(10) for d in range(4)])
mp = Hp.view(40, 4, -1).mean(1)
print("norm real mean", mv.norm(dim=1).mean().item(), "proto mean", mp.norm(dim=1).mean().item(), "dist", (mv - mp).norm(dim=1).mean().item())
# cosine between real cell deltas (cell mean - grand mean) and proto deltas
dv = mv - mv.mean(0); dp = mp - mp.mean(0)
print("cos of cell deltas", F.cosine_similarity(dv, dp).mean().item())
cdv = mv.view(10, 4, -1).mean(1); cdv = cdv - cdv.mean(0)
cdp = mp.view(10, 4, -1).mean(1); cdp = cdp - cdp.mean(0)
print("cos of class deltas", F.cosine_similarity(cdv, cdp).tolist())
torch.save({"Hp": Hp, "yp": yp, "T": T, "Tc": Tc, "Tcell": Tcell, "images": p.images}, f"runs/protos_{sys.argv[1]}.pt")
