# Matrix products at the ViT's shapes through libtorch (MKL), oneDNN and numpy (OpenBLAS), 2 threads, median of 10.
# Run with and without LD_PRELOAD of a library answering MKL's vendor check: see gemm_shapes.txt.
import torch, time, numpy as np
torch.set_num_threads(2)
def bench(f, flops, reps=10):
    for _ in range(3): f()
    ts=[]
    for _ in range(reps):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return flops/sorted(ts)[reps//2]/1e9
for (m,k,n) in ((3072,3072,3072),(12800,192,576),(12800,768,192),(12800,192,768)):
    x=torch.randn(m,k); w=torch.randn(n,k); b=torch.zeros(n)
    print((m,k,n), "aten linear %.0f" % bench(lambda: torch.nn.functional.linear(x,w,b), 2*m*k*n), end=' ')
    try:
        wp = torch.ops.mkldnn._reorder_linear_weight(w, m) if hasattr(torch.ops.mkldnn,'_reorder_linear_weight') else w
        print("mkldnn %.0f" % bench(lambda: torch.ops.mkldnn._linear_pointwise(x,wp,b,"none",[],""), 2*m*k*n), end=' ')
    except Exception as e: print("mkldnn err", str(e)[:100], end=' ')
    xa=x.numpy(); wa=w.numpy().T.copy()
    print("numpy %.0f" % bench(lambda: xa@wa, 2*m*k*n))
