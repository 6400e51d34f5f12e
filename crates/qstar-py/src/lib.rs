//! The Python package `qstar`: the embedded engine or an OpenAI-compatible
//! server as a `Model` (generate, score, choose), and the labeling, rating
//! and search pipelines over lists of dicts, returning the records the
//! command-line program writes. The interpreter lock is released while a
//! model works, so other Python threads run meanwhile.

mod convert;
mod pipelines;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;
use qstar_core::{
    ChooseRequest, GenerateRequest, LanguageModel, Message, ModelError, SamplingParams,
    ScoreRequest,
};
use qstar_engine::{Engine, EngineOptions};

create_exception!(
    qstar,
    QstarError,
    PyException,
    "A failure of the engine, of a model file or of a server (not of the input)."
);

/// The most samples `generate` draws for one prompt.
const MAX_SAMPLES: usize = 256;

/// The runtime every call of the package waits on, started on first use.
pub(crate) fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("qstar")
        .enable_all()
        .build()
        .map_err(|e| QstarError::new_err(format!("cannot start the async runtime: {e}")))?;
    Ok(RUNTIME.get_or_init(|| built))
}

/// Runs `work` to its end with the interpreter lock released.
fn wait<T: Send>(py: Python<'_>, work: impl Future<Output = T> + Send) -> PyResult<T> {
    let rt = runtime()?;
    Ok(py.detach(|| rt.block_on(work)))
}

/// A model's error as a Python exception: the caller's input is a
/// `ValueError`, anything else a `QstarError`.
pub(crate) fn model_error(e: ModelError) -> PyErr {
    if e.is_input_error() {
        PyValueError::new_err(e.to_string())
    } else {
        QstarError::new_err(e.to_string())
    }
}

pub(crate) fn qstar_error(e: impl std::fmt::Display) -> PyErr {
    QstarError::new_err(e.to_string())
}

/// An opened model and its parameter count (for FLOP estimates; `None`
/// when a server does not say).
#[derive(Clone)]
struct Opened {
    model: Arc<dyn LanguageModel>,
    parameters: Option<u64>,
}

/// The embedded engine on `path`, or on the default model (fetched into
/// the cache on first use, as `qstar model fetch` does). Runs without the
/// interpreter lock.
async fn open_embedded(
    path: Option<PathBuf>,
    adapter: Option<PathBuf>,
    threads: usize,
) -> PyResult<Opened> {
    let path = match path {
        Some(p) if !p.is_file() => {
            return Err(PyValueError::new_err(format!(
                "no model file at {}",
                p.display()
            )))
        }
        Some(p) => p,
        None => {
            let p = qstar_engine::fetch::default_model_path();
            if !p.exists() {
                let quiet = |_: u64, _: Option<u64>| {};
                qstar_engine::fetch::fetch_default(&quiet)
                    .await
                    .map_err(qstar_error)?;
            }
            p
        }
    };
    let options = EngineOptions {
        threads,
        ..EngineOptions::default()
    };
    let engine =
        Engine::load_with_adapter(&path, adapter.as_deref(), options).map_err(qstar_error)?;
    let parameters = Some(engine.info().parameters as u64);
    Ok(Opened {
        model: Arc::new(engine),
        parameters,
    })
}

/// The default embedded model, opened once for the pipelines called
/// without `model=`. Runs without the interpreter lock.
fn default_model(py: Python<'_>) -> PyResult<Opened> {
    static DEFAULT: Mutex<Option<Opened>> = Mutex::new(None);
    let rt = runtime()?;
    py.detach(|| {
        let mut slot = DEFAULT
            .lock()
            .map_err(|_| QstarError::new_err("the default model failed to open earlier"))?;
        if let Some(opened) = slot.as_ref() {
            return Ok(opened.clone());
        }
        let opened = rt.block_on(open_embedded(None, None, 0))?;
        *slot = Some(opened.clone());
        Ok(opened)
    })
}

/// The model a pipeline runs on: the one given, or the default one.
pub(crate) fn model_or_default(
    py: Python<'_>,
    model: Option<&Bound<'_, Model>>,
) -> PyResult<Opened> {
    match model {
        Some(m) => Ok(m.get().opened.clone()),
        None => default_model(py),
    }
}

/// A language model: the embedded engine on a GGUF file (by default the
/// fetched SmolLM2-135M-Instruct) or OpenAI-compatible servers.
#[pyclass(frozen, module = "qstar")]
pub(crate) struct Model {
    opened: Opened,
}

#[pymethods]
impl Model {
    /// `Model()` opens the default model (fetching it on first use);
    /// `Model(path)` a GGUF file; `Model(base_url=URL)` (or a list of URLs
    /// to spread load over) an OpenAI-compatible server.
    #[new]
    #[pyo3(signature = (path=None, base_url=None, *, adapter=None, threads=None, api_key=None, server_params=None, server_model=None, concurrency=8))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        base_url: Option<&Bound<'_, PyAny>>,
        adapter: Option<PathBuf>,
        threads: Option<usize>,
        api_key: Option<String>,
        server_params: Option<u64>,
        server_model: Option<String>,
        concurrency: usize,
    ) -> PyResult<Self> {
        let Some(base_url) = base_url else {
            let opened = wait(py, open_embedded(path, adapter, threads.unwrap_or(0)))??;
            return Ok(Model { opened });
        };
        if path.is_some() || adapter.is_some() {
            return Err(PyValueError::new_err(
                "a server model takes no path or adapter: load them in the server",
            ));
        }
        let base_urls: Vec<String> = if let Ok(url) = base_url.cast::<PyString>() {
            vec![url.to_str()?.to_string()]
        } else {
            base_url
                .extract()
                .map_err(|_| PyValueError::new_err("base_url is a URL or a list of URLs"))?
        };
        if base_urls.is_empty() {
            return Err(PyValueError::new_err("base_url lists no server"));
        }
        let config = qstar_openai::OpenAiConfig {
            base_urls,
            model: server_model.unwrap_or_else(|| "default".into()),
            api_key: api_key.or_else(|| std::env::var("OPENAI_API_KEY").ok()),
            concurrency: concurrency.max(1),
            ..Default::default()
        };
        let server = qstar_openai::OpenAiBackend::new(config).map_err(model_error)?;
        let parameters = match server_params {
            Some(n) => Some(n),
            None => wait(py, server.model_parameters())?,
        };
        Ok(Model {
            opened: Opened {
                model: Arc::new(server),
                parameters,
            },
        })
    }

    /// The backend's name.
    #[getter]
    fn backend(&self) -> String {
        self.opened.model.backend_name()
    }

    /// The model's parameter count (`None` when a server does not say).
    #[getter]
    fn parameters(&self) -> Option<u64> {
        self.opened.parameters
    }

    fn __repr__(&self) -> String {
        format!("qstar.Model({})", self.opened.model.backend_name())
    }

    /// Samples `n` completions of `prompt` (greedy at temperature 0), as
    /// `qstar generate --json` prints them: `{"completions": [{"text",
    /// "token_ids", "finish_reason"}, …], "usage": {…}}`. With `chat` the
    /// prompt is one user message through the model's chat template.
    #[pyo3(signature = (prompt, *, max_tokens=128, temperature=0.0, top_p=1.0, top_k=0, seed=0, stop=None, n=1, chat=false))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        max_tokens: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        seed: u64,
        stop: Option<Vec<String>>,
        n: usize,
        chat: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !(temperature >= 0.0 && top_p > 0.0 && top_p <= 1.0) {
            return Err(PyValueError::new_err(
                "temperature must be ≥ 0 and top_p in (0, 1]",
            ));
        }
        if !(1..=MAX_SAMPLES).contains(&n) {
            return Err(PyValueError::new_err(format!(
                "n must be 1 to {MAX_SAMPLES}, not {n}"
            )));
        }
        let stop = stop.unwrap_or_default();
        if stop.iter().any(String::is_empty) {
            return Err(PyValueError::new_err("a stop string is empty"));
        }
        let request = GenerateRequest {
            messages: chat.then(|| vec![Message::user(prompt.clone())]),
            prompt,
            n,
            params: SamplingParams {
                temperature,
                top_k,
                top_p,
                seed,
                max_tokens,
                stop,
                ignore_eos: false,
            },
            top_logprobs: None,
        };
        let model = self.opened.model.clone();
        let response = wait(py, async move { model.generate(vec![request]).await })?
            .map_err(model_error)?
            .pop()
            .ok_or_else(|| QstarError::new_err("the backend returned no answer"))?;
        convert::to_py(py, &response.summary())
    }

    /// The log-probability of each token of `continuation` after `prompt`,
    /// as `qstar score --json` prints it: `{"tokens": [{"id", "text",
    /// "logprob"}, …], "total_logprob": …}`.
    fn score<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        continuation: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let model = self.opened.model.clone();
        let request = ScoreRequest {
            prompt,
            continuation,
        };
        let response = wait(py, async move { model.score(vec![request]).await })?
            .map_err(model_error)?
            .pop()
            .ok_or_else(|| QstarError::new_err("the backend returned no answer"))?;
        convert::to_py(py, &response.summary())
    }

    /// The exact distribution over complete options after `prompt`, as
    /// `qstar choose --json` prints it: `[{"text", "logprob", "prob"}, …]`
    /// in the order given, the probabilities summing to 1.
    fn choose<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        options: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = ChooseRequest { prompt, options };
        request.validate().map_err(model_error)?;
        let model = self.opened.model.clone();
        let response = wait(py, async move { model.choose(vec![request]).await })?
            .map_err(model_error)?
            .pop()
            .ok_or_else(|| QstarError::new_err("the backend returned no answer"))?;
        convert::to_py(py, &response.summary()["options"])
    }
}

#[pymodule]
#[pyo3(name = "qstar")]
fn qstar_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("QstarError", m.py().get_type::<QstarError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(pipelines::label, m)?)?;
    m.add_function(wrap_pyfunction!(pipelines::rate, m)?)?;
    m.add_function(wrap_pyfunction!(pipelines::revise, m)?)?;
    m.add_function(wrap_pyfunction!(pipelines::judge, m)?)?;
    m.add_function(wrap_pyfunction!(pipelines::solve, m)?)?;
    Ok(())
}
