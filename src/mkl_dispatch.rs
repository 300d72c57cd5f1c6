//! Which matrix-multiply kernels MKL (inside libtorch) runs on this CPU. MKL asks whether the CPU is
//! Intel's and, on an AMD CPU, leaves out the AVX2 kernels it would run there: on AMD CPUs they
//! make sgemm faster at the ViT's shapes (the measurement is in BENCHMARKS.md). Our binaries answer
//! that question themselves (src/shim/mkl_dispatch.cpp; `LEJEPA_MKL_VENDOR_CHECK=1` keeps MKL's own
//! answer). The instruction set MKL uses is still the one the CPU reports.

unsafe extern "C" {
    fn lejepa_mkl_told_intel() -> i32;
    fn lejepa_mkl_vendor_check_replaced() -> i32;
    fn lejepa_mkl_own_answer() -> i32;
}

/// MKL's vendor check as this process answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VendorCheck {
    /// Whether MKL's calls reach our definition (it is exported from the binary).
    pub replaced: bool,
    /// What MKL is told: an Intel CPU, so its AVX2/AVX-512 kernels are eligible.
    pub told_intel: bool,
    /// What MKL's own check says of this CPU; None where libtorch has no MKL.
    pub mkl_says_intel: Option<bool>,
}

pub fn vendor_check() -> VendorCheck {
    // SAFETY: the shim's functions take no arguments and only read the environment and the symbol table.
    unsafe {
        VendorCheck {
            replaced: lejepa_mkl_vendor_check_replaced() == 1,
            told_intel: lejepa_mkl_told_intel() == 1,
            mkl_says_intel: match lejepa_mkl_own_answer() {
                -1 => None,
                answer => Some(answer == 1),
            },
        }
    }
}

impl std::fmt::Display for VendorCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.replaced, self.told_intel, self.mkl_says_intel) {
            (_, _, None) => write!(f, "MKL: not in this libtorch"),
            (_, _, Some(true)) => write!(f, "MKL: Intel CPU, MKL's own kernel choice"),
            (true, true, Some(false)) => write!(f, "MKL: non-Intel CPU, MKL's Intel kernels chosen (LEJEPA_MKL_VENDOR_CHECK=1 keeps MKL's choice)"),
            (true, false, Some(false)) => write!(f, "MKL: non-Intel CPU, MKL's own kernel choice (LEJEPA_MKL_VENDOR_CHECK=1)"),
            (false, _, Some(false)) => write!(f, "MKL: non-Intel CPU, MKL's own kernel choice (the binary does not export its vendor check)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    #[test]
    fn mkl_reaches_our_vendor_check_and_the_kernels_it_then_picks_multiply_correctly() {
        let check = super::vendor_check();
        assert!(check.replaced, "the test binary does not export mkl_serv_intel_cpu_true (build.rs link args)");
        assert_eq!(check.told_intel, std::env::var("LEJEPA_MKL_VENDOR_CHECK").as_deref() != Ok("1") || check.mkl_says_intel == Some(true));
        // At the shapes of the ViT's linear layers, against the same product in f64.
        tch::manual_seed(0);
        for (m, k, n) in [(1280, 192, 576), (1280, 768, 192), (1000, 37, 5)] {
            let (a, b) = (Tensor::randn([m, k], tch::kind::FLOAT_CPU), Tensor::randn([k, n], tch::kind::FLOAT_CPU));
            let exact = a.to_kind(Kind::Double).matmul(&b.to_kind(Kind::Double));
            let error = (a.matmul(&b).to_kind(Kind::Double) - &exact).abs().max().double_value(&[]);
            let scale = exact.abs().max().double_value(&[]);
            assert!(error < 1e-5 * scale, "{m}×{k}×{n}: error {error} against {scale}");
        }
    }
}
