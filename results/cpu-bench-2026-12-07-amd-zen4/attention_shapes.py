# Attention alone at the ViT-tiny shapes (3 heads of 64), fused (two splits of q, k, v) against plain products:
# the microbenchmark behind BENCHMARKS.md changes 16-17. .venv/bin/python attention_shapes.py (2 threads).
# Variants: cur = timm's split (permute, then unbind) + fused kernel; flash2 = unbind in place + fused kernel
# (change 16); math1/2/3 = plain products (math3 is what src/models/vit.rs uses for short sequences, change 17).
# The three passes at the end are the three runs behind the table (they were one script edited between runs).
import torch, time
import torch.nn.functional as F
torch.set_num_threads(2)
H,D=3,64
def cur(qkv):
    B,T,_=qkv.shape
    q,k,v = qkv.reshape(B,T,3,H,D).permute(2,0,3,1,4).unbind(0)
    return F.scaled_dot_product_attention(q,k,v).transpose(1,2).reshape(B,T,H*D)
def flash2(qkv):
    B,T,_=qkv.shape
    q,k,v = [x.transpose(1,2) for x in qkv.reshape(B,T,3,H,D).unbind(2)]
    return F.scaled_dot_product_attention(q,k,v).transpose(1,2).reshape(B,T,H*D)
def math1(qkv):
    B,T,_=qkv.shape
    q,k,v = [x.transpose(1,2) for x in qkv.reshape(B,T,3,H,D).unbind(2)]
    s = (q * D**-0.5) @ k.transpose(-2,-1)
    return (s.softmax(-1) @ v).transpose(1,2).reshape(B,T,H*D)
def math2(qkv):
    B,T,_=qkv.shape
    q,k,v = qkv.reshape(B,T,3,H,D).permute(2,0,3,1,4).reshape(3,B*H,T,D).unbind(0)
    s = torch.baddbmm(torch.empty(1,1,1), q, k.transpose(1,2), beta=0, alpha=D**-0.5)
    return torch.bmm(s.softmax(-1), v).view(B,H,T,D).transpose(1,2).reshape(B,T,H*D)
def math3(qkv):
    B,T,_=qkv.shape
    q,k,v = [x.transpose(1,2) for x in qkv.reshape(B,T,3,H,D).unbind(2)]
    s = torch.matmul(q, k.transpose(-2,-1)) * D**-0.5
    return (s.softmax(-1) @ v).transpose(1,2).reshape(B,T,H*D)

def time_variants(shapes, variants, reps, warm_up):
    """Forward + backward of each variant on each [B, T] shape, alternating variants each repetition;
    prints the median and spread after the first warm_up repetitions."""
    for B, T in shapes:
        x = torch.randn(B, T, 3*H*D, requires_grad=True); g = torch.randn(B, T, H*D)
        ref = cur(x)
        for n, f in variants.items(): assert torch.allclose(f(x), ref, atol=1e-5), n
        times = {n: [] for n in variants}
        for r in range(reps):
            for n, f in variants.items():
                t = time.perf_counter(); f(x).backward(g); times[n].append(time.perf_counter() - t); x.grad = None
        for n in variants:
            ts = sorted(times[n][warm_up:]); print((B, T), n, f"{ts[len(ts)//2]*1000:.1f} ms [{ts[0]*1000:.1f}-{ts[-1]*1000:.1f}]")

time_variants([(256,50),(512,10)], dict(cur=cur,flash2=flash2,math1=math1,math2=math2,math3=math3), reps=15, warm_up=3)
time_variants([(128,65),(64,145),(32,197),(16,401)], dict(flash2=flash2,math3=math3), reps=12, warm_up=2)
time_variants([(256,50),(512,10),(256,50),(128,26)], dict(flash2=flash2,math3=math3), reps=30, warm_up=2)
