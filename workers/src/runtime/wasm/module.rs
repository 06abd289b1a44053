//! From a script to a linked module, once per content hash.
//!
//! A `wasm` script is WAT text (it starts with `(module`) or the base64 of a
//! binary module (`\0asm` once decoded); a `rust` script is compiled to a
//! WASI module first. The result is validated, compiled by Cranelift, checked
//! to be a WASI command (`_start`) and pre-linked against the WASI linker.

use super::{job::JobState, WasmEngine};
use base64::Engine as _;
use schemas::{ErrorCode, JobError, Language};
use serde_json::json;
use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, PoisonError},
};
use wasmtime::{Engine, ExternType, InstancePre, Linker, Module};

/// The magic number every binary WebAssembly module starts with.
const WASM_MAGIC: &[u8] = b"\0asm";

/// Why a script does not compile: its diagnostics, for the user.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct CompileError {
    pub message: String,
    /// The compiler's or the validator's output.
    pub diagnostics: String,
}

impl CompileError {
    pub(crate) fn new(message: impl Into<String>, diagnostics: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            diagnostics: diagnostics.into(),
        }
    }

    /// The job error a run answers with when its script does not compile.
    pub fn into_job_error(self) -> JobError {
        JobError::new(ErrorCode::CompileError, self.message)
            .with_details(&json!({ "diagnostics": self.diagnostics }))
    }
}

/// Linked modules by script hash, the least recently compiled evicted first.
pub(super) struct ModuleCache {
    linker: Linker<JobState>,
    capacity: usize,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_hash: HashMap<String, InstancePre<JobState>>,
    order: VecDeque<String>,
}

impl ModuleCache {
    pub(super) fn new(engine: &Engine, capacity: usize) -> anyhow::Result<Self> {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut JobState| {
            &mut state.wasi
        })?;
        Ok(Self {
            linker,
            capacity,
            entries: Mutex::default(),
        })
    }

    /// The linked module of `script`, compiled now unless cached.
    pub(super) async fn get_or_compile(
        &self,
        engine: &WasmEngine,
        language: Language,
        script_hash: &str,
        script: &str,
        context_json: &str,
    ) -> Result<InstancePre<JobState>, CompileError> {
        if let Some(pre) = self.lock().by_hash.get(script_hash) {
            return Ok(pre.clone());
        }
        let binary = match language {
            Language::Rust => {
                let compiler = engine
                    .rust
                    .as_ref()
                    .ok_or_else(|| CompileError::new("this worker does not compile rust", ""))?;
                compiler.compile(script_hash, script, context_json).await?
            }
            _ => decode(script)?,
        };
        let (wasmtime, linker) = (engine.engine.clone(), self.linker.clone());
        let pre = tokio::task::spawn_blocking(move || link(&wasmtime, &linker, &binary))
            .await
            .map_err(|e| CompileError::new("compiling the module failed", e.to_string()))??;
        let mut entries = self.lock();
        if !entries.by_hash.contains_key(script_hash) {
            entries.order.push_back(script_hash.to_owned());
            entries.by_hash.insert(script_hash.to_owned(), pre.clone());
            while entries.order.len() > self.capacity {
                if let Some(oldest) = entries.order.pop_front() {
                    entries.by_hash.remove(&oldest);
                }
            }
        }
        Ok(pre)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The module bytes of a `wasm` script: WAT text as is, or the decoded base64.
fn decode(script: &str) -> Result<Vec<u8>, CompileError> {
    let text = script.trim();
    if text.starts_with("(module") {
        // wasmtime parses WAT itself.
        return Ok(text.as_bytes().to_vec());
    }
    let compact: String = text.split_ascii_whitespace().collect();
    let binary = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| {
            CompileError::new(
                "a wasm script is WAT text starting with `(module` or a base64 binary module",
                format!("not base64: {e}"),
            )
        })?;
    if !binary.starts_with(WASM_MAGIC) {
        return Err(CompileError::new(
            "the decoded script is not a WebAssembly module",
            "missing the \\0asm magic number",
        ));
    }
    Ok(binary)
}

/// Validates and compiles `binary`, and links it as a WASI command.
fn link(
    engine: &Engine,
    linker: &Linker<JobState>,
    binary: &[u8],
) -> Result<InstancePre<JobState>, CompileError> {
    let module = Module::new(engine, binary)
        .map_err(|e| CompileError::new("the module does not compile", format!("{e:#}")))?;
    match module.get_export("_start") {
        Some(ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0 => {}
        _ => {
            return Err(CompileError::new(
                "the module is not a WASI command",
                "it must export a function `_start` taking and returning nothing",
            ))
        }
    }
    linker
        .instantiate_pre(&module)
        .map_err(|e| CompileError::new("the module's imports cannot be linked", format!("{e:#}")))
}
