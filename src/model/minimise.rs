//! Nelder–Mead minimisation of a mean negative log-likelihood, shared by the
//! maximum-likelihood fits (BG/NBD, Gamma-Gamma).

use argmin::core::{CostFunction, Executor, State};
use argmin::solver::neldermead::NelderMead;
use ndarray::Array1;

/// When a Nelder–Mead run stops: the standard deviation of the simplex's costs below
/// `sd_tolerance`, or `max_iters` iterations.
#[derive(Clone, Copy)]
pub(crate) struct Stop {
    pub sd_tolerance: f64,
    pub max_iters: u64,
}

/// A search of several Nelder–Mead runs: each restarts from the best point so far (a run can
/// stall on a collapsed simplex; a fresh full-size one either confirms the optimum or moves
/// on), until a restart gains less than `restart_gain` or `max_restarts` have run.
pub(crate) struct Search {
    pub stop: Stop,
    pub max_restarts: usize,
    pub restart_gain: f64,
}

/// The fits search each parameter's logarithm; one beyond ±25 (the parameter beyond about
/// 7.2e10 or below 1.4e-11) means the likelihood kept improving towards a boundary: the data
/// cannot pin that parameter down, and the "fit" would be meaningless. The same range bounds
/// what a model file may hold ([`in_fit_range`]).
pub(crate) const LOG_PARAM_LIMIT: f64 = 25.0;

/// The parameters from the logs a search found, or why the data cannot determine one of
/// them ([`LOG_PARAM_LIMIT`]).
pub(crate) fn fitted_params<const N: usize>(
    names: [&str; N],
    logs: &Array1<f64>,
) -> Result<[f64; N], String> {
    for (name, &log_value) in names.iter().zip(logs.iter()) {
        if log_value.is_nan() || log_value.abs() > LOG_PARAM_LIMIT {
            return Err(format!(
                "parameter {name} ran off to {:e}, so the data cannot determine it",
                log_value.exp()
            ));
        }
    }
    Ok(std::array::from_fn(|i| logs[i].exp()))
}

/// Whether a parameter read from a model file lies in the range the fits search (a file
/// `churnd train` wrote always does). Beyond it the formulas overflow or lose all
/// precision, so a file that holds one is refused rather than served.
pub(crate) fn in_fit_range(v: f64) -> bool {
    // A fit that stopped exactly at the limit must pass after exp and ln round it.
    v.is_finite() && v > 0.0 && v.ln().abs() <= LOG_PARAM_LIMIT * (1.0 + 1e-12)
}

/// The message for a parameter [`in_fit_range`] refuses.
pub(crate) fn fit_range_problem(key: &str, v: f64) -> String {
    format!(
        "{key} is {v}, must be a positive number from {:.1e} to {:.1e} (the range churnd \
         train fits in)",
        (-LOG_PARAM_LIMIT).exp(),
        LOG_PARAM_LIMIT.exp()
    )
}

/// Minimises `objective` from `start` by [`Search`], with simplex steps of 1 along each axis:
/// the best parameters and their cost, or why no finite cost was found.
pub(crate) fn minimise<O>(
    objective: O,
    start: Array1<f64>,
    search: Search,
) -> Result<(Array1<f64>, f64), String>
where
    O: CostFunction<Param = Array1<f64>, Output = f64> + Copy,
{
    let mut best_cost = objective.cost(&start).map_err(|e| e.to_string())?;
    let mut best = start;
    for _ in 0..=search.max_restarts {
        let (param, cost) = nelder_mead(objective, &best, 1.0, search.stop)?;
        let gain = best_cost - cost;
        if cost < best_cost {
            best = param;
            best_cost = cost;
        }
        if gain.is_finite() && gain < search.restart_gain {
            break;
        }
    }
    if !best_cost.is_finite() {
        return Err("the log-likelihood is not finite anywhere the search went".into());
    }
    Ok((best, best_cost))
}

/// One Nelder–Mead run from a simplex of `start` and `start` moved by `step` along each axis:
/// the best parameters and their cost, or what the solver said when it failed.
fn nelder_mead<O>(
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

    #[derive(Clone, Copy)]
    struct Bowl;

    impl CostFunction for Bowl {
        type Param = Array1<f64>;
        type Output = f64;

        fn cost(&self, p: &Self::Param) -> Result<f64, Error> {
            Ok((p[0] - 3.0).powi(2) + (p[1] + 1.0).powi(2) + 0.5)
        }
    }

    #[derive(Clone, Copy)]
    struct Nowhere;

    impl CostFunction for Nowhere {
        type Param = Array1<f64>;
        type Output = f64;

        fn cost(&self, _: &Self::Param) -> Result<f64, Error> {
            Ok(f64::INFINITY)
        }
    }

    #[test]
    fn a_search_restarts_until_it_gains_nothing_and_refuses_no_finite_cost() {
        let search = |max_restarts| Search {
            stop: Stop {
                sd_tolerance: 1e-14,
                max_iters: 2_000,
            },
            max_restarts,
            restart_gain: 1e-12,
        };
        let start = Array1::from(vec![10.0, 10.0]);
        let (best, cost) = minimise(Bowl, start.clone(), search(3)).unwrap();
        assert!(
            (best[0] - 3.0).abs() < 1e-4 && (best[1] + 1.0).abs() < 1e-4,
            "{best}"
        );
        assert!((cost - 0.5).abs() < 1e-8, "{cost}");
        let err = minimise(Nowhere, start, search(3)).unwrap_err();
        assert!(err.contains("not finite"), "{err}");
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
