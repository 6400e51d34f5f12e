//! What qstar measures and shows: how well a labeler agrees with people
//! (alignment, position bias, calibration), and the plots of labeling,
//! search and training runs. Pure functions of finished records, so every
//! figure can be recomputed from the files a run wrote.

pub mod labels;
pub mod plot;
pub mod reward;
pub mod token_credit;

pub use labels::{calibration, label_metrics, LabelMetrics, ReliabilityBin};
pub use reward::{reward_metrics, RewardMetrics};
pub use token_credit::{credit_report, CreditCase, CreditReport};
