//! The churn model: its file format, validation on load, and scoring with reasons.
//!
//! A model file is JSON written by `churnd train` (see [`train`]): feature names with their
//! standardisation and coefficients, an intercept, the horizon it predicts, a version, the
//! customer value model's parameters ([`value`]), and a report of how it was trained. Loading
//! checks it against [`FEATURE_NAMES`] and refuses anything that could not score correctly;
//! scoring is a dot product and a sigmoid with per-feature contributions, so every
//! probability can say why.

pub(crate) mod bgnbd;
pub mod derived;
pub mod evaluate;
pub mod metrics;
mod minimise;
pub mod pareto_nbd;
pub mod train;
pub mod value;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use self::derived::{input_name, ChurnLogit, InputVector, DERIVED_NAMES, INPUT_COUNT};
use self::value::{ValueModel, ValueParams};
use crate::features::{FeatureVector, FEATURE_COUNT, FEATURE_NAMES};

/// The `format` tag of the model files `churnd train` writes: the churn model with the
/// inputs it derives from its value model ([`derived`]), and the value model's parameters
/// (`value`, required).
pub(crate) const MODEL_FORMAT: &str = "churnd-logistic/3";

/// The format before the derived inputs: still read; the derived inputs get no weight.
pub const MODEL_FORMAT_V2: &str = "churnd-logistic/2";

/// The format before the value model: still read, without value estimates (a `value`
/// section in such a file is refused).
pub const MODEL_FORMAT_V1: &str = "churnd-logistic/1";

/// A model file as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub format: String,
    pub version: String,
    /// The model predicts "no purchase within this many days".
    pub horizon_days: u32,
    pub features: Vec<FeatureParams>,
    pub intercept: f64,
    /// The customer value model (format 2 on; absent in format 1 files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ValueParams>,
    /// How the model was trained: data summary, settings, validation metrics. Free-form for
    /// the scorer; written by `churnd train`.
    #[serde(default)]
    pub training: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureParams {
    pub name: String,
    pub mean: f64,
    pub scale: f64,
    pub coefficient: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {path} is not valid model JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("model file {path} is invalid: {}", problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// A validated model, ready to score.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    version: String,
    horizon_days: u32,
    /// Per input: the features, then the derived inputs ([`derived`]).
    mean: InputVector,
    /// 1 / scale, so scoring multiplies.
    inv_scale: InputVector,
    coefficient: InputVector,
    intercept: f64,
    /// `None` for a format 1 file, which predates the value model.
    value: Option<ValueModel>,
    /// The derived input under the value model's BG/NBD; `None` when no derived input has
    /// weight (format 1 and 2 files), which then stays 0.
    churn_logit: Option<ChurnLogit>,
}

/// A probability and what produced it.
#[derive(Debug, Clone, Copy)]
pub struct Score {
    pub probability: f64,
    /// The log-odds behind `probability`.
    pub logit: f64,
    /// Per input (the features, then the derived inputs): coefficient × standardised value
    /// (the log-odds it adds).
    pub contributions: [f64; INPUT_COUNT],
    /// Per input: whether the customer's value is above the training mean.
    above_mean: [bool; INPUT_COUNT],
}

/// One feature pushing the churn probability up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreReason {
    pub feature: &'static str,
    /// The customer's value is above the training population's mean.
    pub high: bool,
}

impl fmt::Display for ScoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = if self.high { "high" } else { "low" };
        write!(f, "{}:{level}", self.feature)
    }
}

impl Score {
    /// The features that raise the probability most, strongest first, at most `limit`.
    pub fn reasons(&self, limit: usize) -> Vec<ScoreReason> {
        let mut order: Vec<usize> = (0..INPUT_COUNT)
            .filter(|&i| self.contributions[i] > 0.0)
            .collect();
        order.sort_by(|&a, &b| self.contributions[b].total_cmp(&self.contributions[a]));
        order
            .into_iter()
            .take(limit)
            .map(|i| ScoreReason {
                feature: input_name(i),
                high: self.above_mean[i],
            })
            .collect()
    }
}

/// A digest of a model file's bytes: a change of content, however quick and however written
/// (in place or by rename), is a change.
pub(crate) fn fingerprint(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

impl Model {
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::load_fingerprinted(path).map(|(model, _)| model)
    }

    /// The model and the [`fingerprint`] of the very bytes it was read from: a watcher that
    /// starts later compares the file with what is served, so a file replaced in between is
    /// still seen as a change.
    pub(crate) fn load_fingerprinted(path: &Path) -> Result<(Self, u64), ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok((Self::from_slice(&bytes, path)?, fingerprint(&bytes)))
    }

    /// Parses and validates model JSON; `path` only names the source in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ModelError> {
        Self::from_slice(text.as_bytes(), path)
    }

    /// [`Self::from_json`] from the file's bytes (which must be UTF-8 JSON).
    pub(crate) fn from_slice(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        let file: ModelFile =
            serde_json::from_slice(bytes).map_err(|source| ModelError::Parse {
                path: path.to_owned(),
                source,
            })?;
        Self::from_file(&file).map_err(|problems| ModelError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// Validates a model file: every problem is reported, not just the first.
    pub fn from_file(file: &ModelFile) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut value = None;
        let format = file.format.as_str();
        match (format, &file.value) {
            (MODEL_FORMAT | MODEL_FORMAT_V2, Some(params)) => match ValueModel::new(*params) {
                Ok(v) => value = Some(v),
                Err(p) => problems.extend(p),
            },
            (MODEL_FORMAT | MODEL_FORMAT_V2, None) => problems.push(format!(
                "the value parameters (\"value\") are missing; a {format:?} file must \
                 carry them: retrain with `churnd train`"
            )),
            (MODEL_FORMAT_V1, None) => {}
            (MODEL_FORMAT_V1, Some(_)) => problems.push(format!(
                "a {MODEL_FORMAT_V1:?} file has no \"value\" section; value parameters need \
                 format {MODEL_FORMAT:?}"
            )),
            (other, _) => problems.push(format!(
                "format is {other:?}, this build reads {MODEL_FORMAT:?}, {MODEL_FORMAT_V2:?} \
                 and {MODEL_FORMAT_V1:?}"
            )),
        }
        // The derived inputs are part of format 3 on, and only of it.
        let derived_expected = format == MODEL_FORMAT;
        if file.version.trim().is_empty() {
            problems.push("version is empty".into());
        }
        if file.horizon_days == 0 {
            problems.push("horizon_days must be at least 1".into());
        }
        if !file.intercept.is_finite() {
            problems.push("intercept is not a finite number".into());
        }
        let mut model = Model {
            version: file.version.clone(),
            horizon_days: file.horizon_days,
            mean: [0.0; INPUT_COUNT],
            inv_scale: [1.0; INPUT_COUNT],
            coefficient: [0.0; INPUT_COUNT],
            intercept: file.intercept,
            value,
            churn_logit: None,
        };
        let mut seen = [false; INPUT_COUNT];
        for p in &file.features {
            let Some(i) = (0..INPUT_COUNT).find(|&i| input_name(i) == p.name) else {
                problems.push(format!("unknown feature {:?}", p.name));
                continue;
            };
            if i >= FEATURE_COUNT && !derived_expected {
                problems.push(format!(
                    "feature {:?} is derived from the value model, which needs format {MODEL_FORMAT:?}",
                    p.name
                ));
            }
            if std::mem::replace(&mut seen[i], true) {
                problems.push(format!("feature {:?} is listed twice", p.name));
            }
            if !(p.mean.is_finite() && p.coefficient.is_finite()) {
                problems.push(format!(
                    "feature {:?} has a non-finite mean or coefficient",
                    p.name
                ));
            }
            // 1/scale must be finite too: a subnormal scale would make scores infinite.
            if !(p.scale.is_finite() && p.scale > 0.0 && (1.0 / p.scale).is_finite()) {
                problems.push(format!(
                    "feature {:?} has scale {}, must be a positive normal number",
                    p.name, p.scale
                ));
            }
            model.mean[i] = p.mean;
            model.inv_scale[i] = 1.0 / p.scale;
            model.coefficient[i] = p.coefficient;
        }
        for (i, name) in FEATURE_NAMES.iter().enumerate() {
            if !seen[i] {
                problems.push(format!("feature {name:?} is missing"));
            }
        }
        if derived_expected {
            for (i, name) in DERIVED_NAMES.iter().enumerate() {
                if !seen[FEATURE_COUNT + i] {
                    problems.push(format!(
                        "feature {name:?} is missing (derived from the value model, required in format {MODEL_FORMAT:?})"
                    ));
                }
            }
        }
        if problems.is_empty() {
            if model.coefficient[FEATURE_COUNT..].iter().any(|&c| c != 0.0) {
                model.churn_logit = model
                    .value
                    .map(|v| ChurnLogit::new(&v.params().bgnbd, f64::from(file.horizon_days)));
            }
            Ok(model)
        } else {
            Err(problems)
        }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The model predicts "no purchase within this many days".
    pub fn horizon_days(&self) -> u32 {
        self.horizon_days
    }

    /// The customer value model; `None` for a format 1 file, which has none.
    pub fn value(&self) -> Option<&ValueModel> {
        self.value.as_ref()
    }

    /// The feature vector followed by the inputs this model derives from it ([`derived`]).
    fn inputs(&self, x: &FeatureVector) -> InputVector {
        derived::inputs(x, self.churn_logit.as_ref())
    }

    /// Churn probability of one feature vector, with per-input contributions.
    pub fn score(&self, x: &FeatureVector) -> Score {
        let x = self.inputs(x);
        let mut contributions = [0.0; INPUT_COUNT];
        let mut above_mean = [false; INPUT_COUNT];
        let mut logit = self.intercept;
        for i in 0..INPUT_COUNT {
            let centred = x[i] - self.mean[i];
            let c = self.coefficient[i] * centred * self.inv_scale[i];
            contributions[i] = c;
            above_mean[i] = centred > 0.0;
            logit += c;
        }
        Score {
            probability: sigmoid(logit),
            logit,
            contributions,
            above_mean,
        }
    }

    /// Churn probability alone (the same arithmetic, in the same order, as [`Self::score`]).
    pub fn probability(&self, x: &FeatureVector) -> f64 {
        let logit = self
            .inputs(x)
            .iter()
            .zip(&self.mean)
            .zip(&self.coefficient)
            .zip(&self.inv_scale)
            .fold(self.intercept, |logit, (((x, mean), c), inv_scale)| {
                logit + c * (x - mean) * inv_scale
            });
        sigmoid(logit)
    }

    /// How far up and how far down the log-odds could have moved at most, anywhere between
    /// inputs `from` and `to`, when each input moves monotonically from one to the other:
    /// the sums of the contributions that rise and of those that fall.
    ///
    /// The derived inputs count too: BG/NBD's churn probability moves monotonically when
    /// recency and tenure do (a longer silence only makes it larger).
    pub(crate) fn logit_reach(&self, from: &FeatureVector, to: &FeatureVector) -> (f64, f64) {
        let (from, to) = (self.inputs(from), self.inputs(to));
        (0..INPUT_COUNT)
            .map(|i| self.coefficient[i] * self.inv_scale[i] * (to[i] - from[i]))
            .fold((0.0, 0.0), |(up, down), c| {
                (up + c.max(0.0), down + (-c).max(0.0))
            })
    }
}

pub(crate) fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid model file: coefficient 1 on `log_recency_days`, 0 elsewhere.
    pub(crate) fn recency_only_model_file() -> ModelFile {
        ModelFile {
            format: MODEL_FORMAT.into(),
            version: "test-1".into(),
            horizon_days: 90,
            features: FEATURE_NAMES
                .iter()
                .chain(&DERIVED_NAMES)
                .map(|&name| FeatureParams {
                    name: name.into(),
                    mean: if name == "log_recency_days" { 3.0 } else { 0.0 },
                    scale: if name == "log_recency_days" { 0.5 } else { 1.0 },
                    coefficient: if name == "log_recency_days" { 1.0 } else { 0.0 },
                })
                .collect(),
            intercept: -1.0,
            value: Some(value::tests::cdnow_like()),
            training: serde_json::Value::Null,
        }
    }

    /// [`recency_only_model_file`] as a format 1 file: no value model, no derived input.
    pub(crate) fn format_1_model_file() -> ModelFile {
        let mut file = recency_only_model_file();
        file.format = MODEL_FORMAT_V1.into();
        file.value = None;
        file.features
            .retain(|f| !DERIVED_NAMES.contains(&f.name.as_str()));
        file
    }

    #[test]
    fn scores_match_a_hand_computed_logit() {
        let model = Model::from_file(&recency_only_model_file()).unwrap();
        let mut x = [0.0; FEATURE_COUNT];
        x[0] = 4.0; // (4 - 3) / 0.5 = 2 standard deviations above the mean
        let score = model.score(&x);
        let expected = 1.0 / (1.0 + (-(2.0 - 1.0f64)).exp());
        assert!((score.probability - expected).abs() < 1e-15);
        assert_eq!(model.probability(&x), score.probability);
        assert_eq!(
            score.reasons(3),
            vec![ScoreReason {
                feature: "log_recency_days",
                high: true
            }]
        );
        assert_eq!(score.reasons(3)[0].to_string(), "log_recency_days:high");
    }

    #[test]
    fn every_problem_of_a_bad_file_is_reported() {
        let mut file = recency_only_model_file();
        file.format = "other/9".into();
        file.features[1].scale = 0.0;
        file.features[4].scale = 1e-310;
        file.features[2].coefficient = f64::NAN;
        file.features[3].name = "shoe_size".into();
        file.features.pop();
        let problems = Model::from_file(&file).unwrap_err();
        let text = problems.join("\n");
        for needle in [
            "format",
            "scale 0,",
            "scale 0.000",
            "non-finite",
            "unknown feature \"shoe_size\"",
            "is missing",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn a_format_1_file_still_loads_without_value_estimates() {
        let mut file = format_1_model_file();
        let text = serde_json::to_string(&file).unwrap();
        assert!(!text.contains("\"value\""), "{text}");
        let model = Model::from_json(&text, Path::new("old.json")).unwrap();
        assert!(model.value().is_none());
        let current = Model::from_file(&recency_only_model_file()).unwrap();
        let x = [0.5; FEATURE_COUNT];
        assert_eq!(model.probability(&x), current.probability(&x));
        assert_eq!(
            current.value().map(|v| *v.params()),
            Some(value::tests::cdnow_like())
        );

        // A value section in a format 1 file is a mistake, not something to ignore.
        file.value = Some(value::tests::cdnow_like());
        let problems = Model::from_file(&file).unwrap_err().join("\n");
        assert!(problems.contains("has no \"value\" section"), "{problems}");
    }

    #[test]
    fn missing_or_out_of_range_value_parameters_are_refused_with_a_reason() {
        let mut file = recency_only_model_file();
        file.value = None;
        let problems = Model::from_file(&file).unwrap_err().join("\n");
        assert!(
            problems.contains("value parameters (\"value\") are missing"),
            "{problems}"
        );

        let mut file = recency_only_model_file();
        let value = file.value.as_mut().unwrap();
        value.bgnbd.a = -0.5;
        value.gamma_gamma.p = f64::NAN;
        let problems = Model::from_file(&file).unwrap_err().join("\n");
        assert!(problems.contains("value.bgnbd.a is -0.5"), "{problems}");
        assert!(
            problems.contains("value.gamma_gamma.p is NaN"),
            "{problems}"
        );

        // In JSON: a missing parameter, or one nobody knows, names itself.
        let json = serde_json::to_value(recency_only_model_file()).unwrap();
        let mut missing = json.clone();
        missing["value"]["bgnbd"]
            .as_object_mut()
            .unwrap()
            .remove("alpha");
        let err = Model::from_json(&missing.to_string(), Path::new("m.json")).unwrap_err();
        assert!(err.to_string().contains("missing field `alpha`"), "{err}");
        let mut unknown = json;
        unknown["value"]["gamma_gamma"]["v"] = 15.44.into();
        let err = Model::from_json(&unknown.to_string(), Path::new("m.json")).unwrap_err();
        assert!(err.to_string().contains("unknown field `v`"), "{err}");
    }

    #[test]
    fn the_derived_input_belongs_to_format_3_and_scores_under_the_value_model() {
        // A format 2 file (no derived input) still loads and gives the derived input no weight.
        let mut v2 = recency_only_model_file();
        v2.format = MODEL_FORMAT_V2.into();
        v2.features
            .retain(|f| !DERIVED_NAMES.contains(&f.name.as_str()));
        let old = Model::from_file(&v2).unwrap();
        let mut x = [0.0; FEATURE_COUNT];
        x[0] = 4.0;
        assert_eq!(
            old.probability(&x),
            Model::from_file(&recency_only_model_file())
                .unwrap()
                .probability(&x)
        );

        // In format 2 the derived input is refused; in format 3 it is required.
        let mut bad = recency_only_model_file();
        bad.format = MODEL_FORMAT_V2.into();
        let problems = Model::from_file(&bad).unwrap_err().join("\n");
        assert!(
            problems.contains("\"bgnbd_churn_logit\" is derived"),
            "{problems}"
        );
        let mut missing = recency_only_model_file();
        missing.features.pop();
        let problems = Model::from_file(&missing).unwrap_err().join("\n");
        assert!(
            problems.contains("\"bgnbd_churn_logit\" is missing"),
            "{problems}"
        );

        // With weight on it, the score is the BG/NBD log-odds under the file's parameters,
        // and it is named among the reasons.
        let mut file = recency_only_model_file();
        for f in &mut file.features {
            f.coefficient = if f.name == "bgnbd_churn_logit" {
                1.0
            } else {
                0.0
            };
        }
        file.intercept = 0.0;
        let model = Model::from_file(&file).unwrap();
        x[1] = 120f64.ln_1p();
        x[2] = 3f64.ln_1p();
        x[0] = 60f64.ln_1p();
        let b = file.value.unwrap().bgnbd;
        let h = derived::repeat_summary(&x);
        assert_eq!((h.x, h.t.round(), h.t_x.round()), (2.0, 120.0, 60.0));
        let p = b.p_no_purchase(&h, 90.0);
        let score = model.score(&x);
        assert!(
            (score.probability - p).abs() < 1e-9,
            "{} vs {p}",
            score.probability
        );
        assert_eq!(score.reasons(1)[0].feature, "bgnbd_churn_logit");
        // A longer silence can only raise it, and the reach of the log-odds says so.
        let mut later = x;
        later[0] = 90f64.ln_1p();
        later[1] = 150f64.ln_1p();
        let (up, down) = model.logit_reach(&x, &later);
        assert!(up > 0.0 && down == 0.0, "{up} {down}");
        let rise = model.score(&later).logit - score.logit;
        assert!((rise - up).abs() < 1e-9, "{rise} vs {up}");
    }

    #[test]
    fn the_shipped_model_loads_with_its_value_model() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cdnow.json");
        let model = Model::load(&path).unwrap();
        let value = model
            .value()
            .expect("the shipped model carries value parameters");
        assert!(value.params().problems().is_empty());
    }

    #[test]
    fn broken_json_names_the_file() {
        let err = Model::from_json("{not json", Path::new("models/x.json")).unwrap_err();
        assert!(err.to_string().contains("models/x.json"), "{err}");
    }
}
