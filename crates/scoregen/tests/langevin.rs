//! Langevin dynamics and the low-density pitfall, on exact scores.

/// On `unbalanced` (0.8 / 0.2, modes 14 apart) plain Langevin with the exact
/// score assigns particles by which basin they start in (≈ 0.5), while
/// annealed Langevin with the exact perturbed scores recovers 0.8 within
/// 0.03 (5 binomial sds at n = 4000), with the same number of Langevin steps:
/// the 20 levels × 100 steps of `pitfall_numbers`' ladder, as each sampler
/// reports it spent them.
#[test]
fn plain_langevin_misses_the_weights_and_annealed_langevin_recovers_them() {
    scoregen::init();
    let (_, _, d) = scoregen::app::commands::demo::pitfall_numbers(4000, 3, &candle_core::Device::Cpu).unwrap();
    assert_eq!(d.langevin_steps, d.annealed_steps);
    assert_eq!((d.langevin_steps, d.annealed_steps), (20 * 100, 20 * 100), "{d:?}");
    assert!((d.langevin_weight - 0.8).abs() > 0.2, "{d:?}");
    assert!((d.annealed_weight - 0.8).abs() < 0.03, "{d:?}");
}
