# Attention alone at the ViT-tiny shapes (3 heads of 64), fused (two splits of q, k, v) against plain products:
# the microbenchmark behind BENCHMARKS.md changes 16-17. .venv/bin/python attention_shapes.py (2 threads).
# As run for the second table, the shape lists below were edited between runs: (256,50),(512,10) in the first loop;
# (128,65),(64,145),(32,197),(16,401), then (256,50),(512,10),(256,50),(128,26) in the second.
import torch, time, sys
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
fns=dict(cur=cur,flash2=flash2,math1=math1,math2=math2,math3=math3)
res={n:[] for n in fns}
for shape in []:
    B,T=shape
    x=torch.randn(B,T,3*H*D, requires_grad=True); g=torch.randn(B,T,H*D)
    ref=cur(x)
    for n,f in fns.items(): assert torch.allclose(f(x),ref,atol=1e-5), n
    res={n:[] for n in fns}
    for r in range(15):
        for n,f in fns.items():
            t=time.perf_counter(); f(x).backward(g); res[n].append(time.perf_counter()-t); x.grad=None
    for n in fns:
        ts=sorted(res[n][3:]); print(shape,n,f"{ts[len(ts)//2]*1000:.1f} ms [{ts[0]*1000:.1f}-{ts[-1]*1000:.1f}]")
print("longer")
for shape in [(256,50),(512,10),(256,50),(128,26)]:
    B,T=shape
    x=torch.randn(B,T,3*H*D, requires_grad=True); g=torch.randn(B,T,H*D)
    sel=dict(flash2=flash2,math3=math3)
    res={n:[] for n in sel}
    for r in range(30):
        for n,f in sel.items():
            t=time.perf_counter(); f(x).backward(g); res[n].append(time.perf_counter()-t); x.grad=None
    for n in sel:
        ts=sorted(res[n][2:]); print(shape,n,f"{ts[len(ts)//2]*1000:.1f} ms [{ts[0]*1000:.1f}-{ts[-1]*1000:.1f}]")
