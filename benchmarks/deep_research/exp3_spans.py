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
T = pr["T"].double(); Tcell = pr["Tcell"].double()
def eraser(U, S=None, ridge=1e-3):
    d = U.shape[0]
    V = U if S is None else torch.linalg.solve(S + ridge * torch.trace(S) / d * torch.eye(d, dtype=S.dtype), U)
    return torch.eye(d, dtype=U.dtype) - U @ torch.linalg.solve(V.T @ U, V.T)
def mask(y, c, d=None):
    m = y[:, 0] == c
    return m if d is None else m & (y[:, 1] == d)
c = int(sys.argv[1])
req = ForgetRequest(CLASSES, DOMAINS, forget_classes=[CLASSES[c]])
fv, fp, fe = mask(yv, c), mask(yp, c), mask(ye, c)
d_or = (Hv[fv].mean(0) - Hv[~fv].mean(0))
Sw = torch.stack([torch.cov(Hv[mask(yv, k, d)].T) for k in range(10) for d in range(4)]).mean(0)
Sw = Sw + 1e-6 * torch.eye(128, dtype=Sw.dtype) * torch.trace(Sw)
dprime = lambda v: float(v @ torch.linalg.solve(Sw, v)) ** 0.5
print("d' oracle", dprime(d_or))
def resid(U):
    Q, _ = torch.linalg.qr(U); r = d_or - Q @ (Q.T @ d_or)
    return float(r.norm() / d_or.norm()), dprime(r)
cands = {
 "ev-protorest": (He[fe].mean(0) - Hp[~fp].mean(0))[:, None],
 "ev-protocells": torch.stack([He[fe].mean(0) - Hp[mask(yp, k, d)].mean(0) for k in range(10) if k != c for d in range(4)], 1),
 "ev,T": torch.stack([He[fe].mean(0), T[:, c], T[:, [k for k in range(10) if k != c]].mean(1)], 1),
 "ev,Tall": torch.cat([He[fe].mean(0)[:, None], T], 1),
 "ev,Tall,Tcell": torch.cat([He[fe].mean(0)[:, None], T, Tcell.T], 1),
 "protocells_all": torch.cat([Hp.view(40, 4, -1).mean(1).T], 1),
 "protocells+ev": torch.cat([Hp.view(40, 4, -1).mean(1).T, He[fe].mean(0)[:, None]], 1),
 "protocells+evcells": torch.cat([Hp.view(40, 4, -1).mean(1).T, torch.stack([He[mask(ye,c,d)].mean(0) for d in range(4)],1)], 1),
 "Tcell+evcells": torch.cat([Tcell.T, torch.stack([He[mask(ye,c,d)].mean(0) for d in range(4)],1)], 1),
}
for k, U in cands.items():
    rr = resid(U)
    print(f"{k:20s} rank {U.shape[1]} resid rel {rr[0]:.3f} d' {rr[1]:.2f}")
    if len(sys.argv) > 2:
        for S in [None, torch.cov(Hp.T)]:
            r = full_eval(cache, eraser(U, S).float(), req, pr["T"], pr["Tc"])
            print("   ", "I" if S is None else "Sp", " ".join(f"{k}={v:.3f}" for k, v in r.items() if v is not None), flush=True)
