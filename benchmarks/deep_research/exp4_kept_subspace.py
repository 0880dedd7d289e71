import sys, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
torch.set_num_threads(1)
from benchmarks.deep_research.common import *
from lightning_unlearn import ForgetRequest
from lightning_unlearn.data.world import CLASSES, DOMAINS
from lightning_unlearn.embedded import load_embedded
from lightning_unlearn.zeroshot import text_embeddings
from lightning_unlearn.prompts import ATTRIBUTE_PROMPTS
emb = load_embedded()
A = text_embeddings(emb.model, emb.tokenizer, list(ATTRIBUTE_PROMPTS)).double()
Dm = text_embeddings(emb.model, emb.tokenizer, [f"a {d}." for d in DOMAINS]).double()
cache = load(); pr = torch.load("runs/protos_60.pt")
T = pr["T"].double(); Tc = pr["Tc"].double()
for c in [int(a) for a in sys.argv[1:]]:
    req = ForgetRequest(CLASSES, DOMAINS, forget_classes=[CLASSES[c]])
    kept = [k for k in range(10) if k != c]
    for name, S in {"Tkept": T[:, kept], "Tkept+col": torch.cat([T[:, kept], Tc], 1),
                    "Tkept+attr": torch.cat([T[:, kept], A.T], 1),
                    "Tkept+attr+dom": torch.cat([T[:, kept], A.T, Dm.T], 1)}.items():
        Q, _ = torch.linalg.qr(S)
        for perp in [False, True]:
            if perp:  # remove the forget text from S
                tf = T[:, c] - Q @ (Q.T @ T[:, c]) * 0  # placeholder
                Qf = torch.linalg.qr(torch.cat([T[:, [c]], S], 1))[0]
                # complement of t_f inside span(S + t_f)
                Pf = Qf @ Qf.T
                u = Pf @ T[:, c]; u = u / u.norm()
                E = Q @ Q.T - (Q @ Q.T @ u)[:, None] @ (Q @ Q.T @ u)[None, :] / float(u @ Q @ Q.T @ u)
            else:
                E = Q @ Q.T
            r = full_eval(cache, E.float(), req, pr["T"], pr["Tc"])
            print(f"{CLASSES[c]:8s} {name:16s} perp={perp} rank={S.shape[1]} " + " ".join(f"{k}={v:.3f}" for k, v in r.items() if v is not None), flush=True)
