//! Nelder–Mead minimisation of a mean negative log-likelihood, shared by the
//! maximum-likelihood fits (BG/NBD, Gamma-Gamma).

use argmin::core::{CostFunction, Executor, State};
use argmin::solver::neldermead::NelderMead;
use ndarray::Array1;

/// When a Nelder–Mead run stops: the standard deviation of the simplex's costs below
/// `sd_tolerance`, or `max_iters` iterations.
pub(crate) struct Stop {
    pub sd_tolerance: f64,
    pub max_iters: u64,
}

/// One Nelder–Mead run from a simplex of `start` and `start` moved by `step` along each axis:
/// the best parameters and their cost, or what the solver said when it failed.
pub(crate) fn nelder_mead<O>(
    objective: O,
    start: &Array1<f64>,
    step: f64,
    stop: Stop,
) -> Result<(Array1<f64>, f64), String>
where
    O: CostFunction<Param = Array1<f64>, Output = f64>,
{
    let mut simplex = vec![start.clone()];
    for i in 0..start.len() {
        let mut vertex = start.clone();
        vertex[i] += step;
        simplex.push(vertex);
    }
    let solver = NelderMead::new(simplex)
        .with_sd_tolerance(stop.sd_tolerance)
        .map_err(|e| e.to_string())?;
    let result = Executor::new(objective, solver)
        .configure(|state| state.max_iters(stop.max_iters))
        .run()
        .map_err(|e| e.to_string())?;
    let state = result.state();
    let best = state
        .get_best_param()
        .cloned()
        .ok_or("Nelder-Mead returned no parameters")?;
    Ok((best, state.get_best_cost()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argmin::core::Error;

    struct Bowl;

    impl CostFunction for Bowl {
        type Param = Array1<f64>;
        type Output = f64;

        fn cost(&self, p: &Self::Param) -> Result<f64, Error> {
            Ok((p[0] - 3.0).powi(2) + (p[1] + 1.0).powi(2) + 0.5)
        }
    }

    #[test]
    fn finds_the_bottom_of_a_bowl() {
        let stop = Stop {
            sd_tolerance: 1e-14,
            max_iters: 2_000,
        };
        let (best, cost) = nelder_mead(Bowl, &Array1::from(vec![0.0, 0.0]), 1.0, stop).unwrap();
        assert!(
            (best[0] - 3.0).abs() < 1e-4 && (best[1] + 1.0).abs() < 1e-4,
            "{best}"
        );
        assert!((cost - 0.5).abs() < 1e-8, "{cost}");
    }
}
