//! Data sets qstar reads: preference pairs for AI labeling, and questions
//! with checkable answers (GSM8K, MATH, generated arithmetic and serial
//! problems) for test-time search.

pub mod first_error;
pub mod latex;
pub mod mutate;
pub mod numeric;
pub mod preference;
pub mod problems;
pub mod serial;

pub use preference::{
    pair_from_row, read_pairs, read_prompts, PreferencePair, ReadReport, RowLayout, TaskError,
    TrlForm,
};
pub use problems::{
    arithmetic_problem, arithmetic_problem_in, problem_from_row, read_json_rows, read_problems,
    ArithmeticFormat, Problem, Task,
};
pub use serial::{SerialFormat, SerialKind, SerialProblem, SERIAL_KINDS};
