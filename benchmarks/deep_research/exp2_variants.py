import sys, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
torch.set_num_threads(1)
from benchmarks.deep_research.common import *
from lightning_unlearn import ForgetRequest
from lightning_unlearn.data.world import CLASSES, DOMAINS
cache = load(); pr = torch.load("runs/protos_60.pt")
P = cache["proj"].double()
Hv = cache["val"]["pooled"].double() @ P; yv = cache["val"]["y"]
He = cache["train"]["pooled"].double() @ P; ye = cache["train"]["y"]
Hp = pr["Hp"].double(); yp = pr["yp"]

def eraser(U, S=None, ridge=1e-3):
    d = U.shape[0]
    if S is None:
        V = U
    else:
        S = S + ridge * torch.trace(S) / d * torch.eye(d, dtype=S.dtype)
        V = torch.linalg.solve(S, U)
    return torch.eye(d, dtype=U.dtype) - U @ torch.linalg.solve(V.T @ U, V.T)

def cov(X): return torch.cov(X.T)
def mask(y, c, d=None):
    m = y[:, 0] == c
    return m if d is None else m & (y[:, 1] == d)
res = {}
for c in range(10) if len(sys.argv) < 2 else [int(a) for a in sys.argv[1:]]:
    req = ForgetRequest(CLASSES, DOMAINS, forget_classes=[CLASSES[c]])
    fv, fp, fe = mask(yv, c), mask(yp, c), mask(ye, c)
    d_or = (Hv[fv].mean(0) - Hv[~fv].mean(0))[:, None]
    d_p = (Hp[fp].mean(0) - Hp[~fp].mean(0))[:, None]
    d_pd = torch.stack([Hp[mask(yp, c, d)].mean(0) - Hp[~fp & (yp[:, 1] == d)].mean(0) for d in range(4)], 1)
    d_e = (He[fe].mean(0) - Hp[~fp].mean(0))[:, None]
    bias = (He[fe].mean(0) - Hp[fp].mean(0))[:, None]
    d_ed = torch.stack([He[mask(ye, c, d)].mean(0) - Hp[~fp & (yp[:, 1] == d)].mean(0) for d in range(4)], 1)
    variants = {
        "none": torch.eye(128, dtype=torch.float64),
        "oracle": eraser(d_or, cov(Hv)),
        "oracle_I": eraser(d_or),
        "proto_I": eraser(d_p),
        "proto_Sp": eraser(d_p, cov(Hp)),
        "proto_Sv": eraser(d_p, cov(Hv)),
        "protoD_Sp": eraser(d_pd, cov(Hp)),
        "ev_Sp": eraser(d_e, cov(Hp)),
        "ev+bias_Sp": eraser(torch.cat([d_e, bias], 1), cov(Hp)),
        "evD+p_Sp": eraser(torch.cat([d_ed, d_p], 1), cov(Hp)),
        "evD+pD_Sp": eraser(torch.cat([d_ed, d_pd], 1), cov(Hp)),
    }
    for name, E in variants.items():
        r = full_eval(cache, E.float(), req, pr["T"], pr["Tc"])
        print(f"{CLASSES[c]:8s} {name:12s} " + " ".join(f"{k}={v:.3f}" for k, v in r.items() if v is not None), flush=True)
