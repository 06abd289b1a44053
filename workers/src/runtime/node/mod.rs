//! The Node.js runtime: warm `node` processes running the embedded
//! `runner.js`, which implements the nodejs script contract (SPEC §4): a
//! function body run as `async (event, context) => { … }`, or a module
//! exporting a handler.

use super::{process::RunnerSpec, Instance, LaunchError, Launcher};
use crate::{
    sandbox::{Profile, Sandbox},
    supervisor::{resolve_program, ProcessSpec},
};
use futures::future::BoxFuture;
use schemas::Language;

const RUNNER_JS: &str = include_str!("runner.js");
/// Memory a Node.js process needs beyond its V8 old space: the young
/// generation, code, stacks and the runtime itself.
const PROCESS_OVERHEAD_MB: u32 = 96;

/// How to start Node.js processes.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `node`, looked up on `PATH`, or a path.
    pub node_bin: String,
    /// V8 old-space limit of each process (`--max-old-space-size`).
    pub memory_mb: u32,
    /// Bound on a result, and separately on the logs of one job.
    pub max_output_bytes: usize,
    /// Where the processes run; the process memory limit is `memory_mb`
    /// plus what Node.js needs besides its heap.
    pub sandbox: Sandbox,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            node_bin: "node".to_owned(),
            memory_mb: 128,
            max_output_bytes: 1024 * 1024,
            sandbox: Sandbox::default(),
        }
    }
}

/// Starts warm `node` processes.
pub struct NodeLauncher {
    runner: RunnerSpec,
}

impl NodeLauncher {
    /// Resolves `node_bin` to an absolute path once, here.
    pub fn new(options: &NodeOptions) -> std::io::Result<Self> {
        let program = resolve_program(&options.node_bin)?;
        let args = vec![
            format!("--max-old-space-size={}", options.memory_mb).into(),
            "-e".into(),
            RUNNER_JS.into(),
            options.max_output_bytes.to_string().into(),
        ];
        Ok(Self {
            runner: RunnerSpec::new(
                ProcessSpec {
                    program,
                    args,
                    label: Language::Nodejs.as_str(),
                    memory_mb: options.memory_mb.saturating_add(PROCESS_OVERHEAD_MB),
                    sandbox: options.sandbox.clone(),
                    profile: Profile::Runtime,
                },
                Language::Nodejs,
                options.max_output_bytes,
                options.memory_mb,
            ),
        })
    }
}

impl Launcher for NodeLauncher {
    fn language(&self) -> Language {
        Language::Nodejs
    }

    fn launch(&self) -> BoxFuture<'_, Result<Box<dyn Instance>, LaunchError>> {
        self.runner.launch()
    }
}
