//! Learning-rate schedule as a plain function of the step: linear warm-up from 0, then cosine
//! decay to `peak × final_ratio` at the last step (official README: final lr = lr/1000).

pub fn learning_rate(step: u64, total_steps: u64, warmup_steps: u64, peak: f64, final_ratio: f64) -> f64 {
    let floor = peak * final_ratio;
    if step < warmup_steps {
        return peak * (step + 1) as f64 / warmup_steps as f64;
    }
    let span = total_steps.saturating_sub(warmup_steps).max(1);
    let progress = ((step - warmup_steps) as f64 / span as f64).min(1.0);
    floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::learning_rate;

    #[test]
    fn warms_up_linearly_then_decays_by_cosine_to_the_floor() {
        let lr = |s| learning_rate(s, 110, 10, 1e-3, 1e-3);
        assert!((lr(0) - 1e-4).abs() < 1e-15);
        assert!((lr(9) - 1e-3).abs() < 1e-15, "peak at the end of the warm-up");
        assert!((lr(10) - 1e-3).abs() < 1e-15);
        assert!((lr(60) - (1e-6 + 0.5 * (1e-3 - 1e-6))).abs() < 1e-15, "half-way through the cosine");
        assert!((lr(110) - 1e-6).abs() < 1e-15);
        assert!((10..110).all(|s| lr(s + 1) <= lr(s)));
    }
}
