import sys, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
torch.set_num_threads(1)
from benchmarks.deep_research.common import *
from lightning_unlearn import ForgetRequest
from lightning_unlearn.data.world import CLASSES, DOMAINS
cache = load(); pr = torch.load("runs/protos_60.pt")
P = cache["proj"].double()
He = cache["train"]["pooled"].double() @ P; ye = cache["train"]["y"]
Hp = pr["Hp"].double().view(40, 4, -1); 
def eraser(U):
    Q, _ = torch.linalg.qr(U); return torch.eye(U.shape[0], dtype=U.dtype) - Q @ Q.T
for c in range(10):
    req = ForgetRequest(CLASSES, DOMAINS, forget_classes=[CLASSES[c]])
    f = [c * 4 + d for d in range(4)]; r = [i for i in range(40) if i not in f]
    for name, k in [("p1", 1), ("p4", 4)]:
        mf = Hp[f, :k].reshape(-1, 128).mean(0); mr = Hp[r, :k].reshape(-1, 128).mean(0)
        me = He[ye[:, 0] == c].mean(0)
        for src, m in [("free", mf), ("ev", me)]:
            res = full_eval(cache, eraser((m - mr)[:, None]).float(), req, pr["T"], pr["Tc"])
            print(f"{CLASSES[c]:8s} {name} {src:5s} " + " ".join(f"{k}={v:.3f}" for k, v in res.items() if v is not None), flush=True)
