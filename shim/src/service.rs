//! The shim's two faces: the binary's actions containerd runs (`start`, `delete`:
//! [`Manager`]) and the task service it calls over ttrpc ([`Tasks`]).
//!
//! A task's life: `create` mounts the image, reads its kernel and `lightvm.json`,
//! checks the spec and makes the task's process (a holder in its network namespace);
//! `start` boots the guest (the network is known only then: `ctr run --cni` fills the
//! namespace between the two); the guest's thread reports its end; `delete` takes the
//! rest away. Events go out in containerd's order: create, start, exit, delete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use chaos::domain::Ending;
use containerd_shim::api::{self, Status};
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{
    Config, DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult,
};
use oci_spec::runtime::Spec;

use crate::guest::{self, Running};
use crate::holder::{Holder, NetnsClaim};
use crate::spec::{self, GuestPlan, Network};
use crate::{podnet, rootfs};

/// The runtime's name (`ctr run --runtime io.containerd.lightvm.v1`).
pub const RUNTIME: &str = "io.containerd.lightvm.v1";

/// The annotation Kubernetes' CRI gives every container of a pod: one shim per pod.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// The binary's actions.
pub struct Manager {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("namespace", &self.namespace)
            .field("id", &self.id)
            .finish()
    }
}

impl containerd_shim::Shim for Manager {
    type T = Tasks;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // containerd runs `start` in the bundle: its spec says which pod, if any.
        let grouping = Spec::load("config.json")
            .ok()
            .and_then(|spec| spec.annotations().clone())
            .and_then(|annotations| annotations.get(SANDBOX_ID).cloned())
            .unwrap_or_else(|| opts.id.clone());
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        Ok(address)
    }

    /// containerd lost the shim (it died): take away what it left for this task.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let name = spec::domain_name(&self.namespace, &self.id);
        if let Err(err) = guest::destroy_by_name(&name) {
            log::warn!("domain {name}: {err}");
        }
        // containerd runs `delete` in the bundle.
        if let Ok(bundle) = std::env::current_dir() {
            rootfs::unmount(&bundle.join("rootfs"));
        }
        Ok(DeleteResponse {
            exit_status: 128 + 9,
            exited_at: MessageField::some(now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Tasks {
        Tasks(Arc::new(Shared {
            namespace: self.namespace.clone(),
            exit: self.exit.clone(),
            publisher,
            tasks: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
        }))
    }
}

/// The task service.
#[derive(Clone)]
pub struct Tasks(Arc<Shared>);

struct Shared {
    namespace: String,
    exit: Arc<ExitSignal>,
    publisher: RemotePublisher,
    tasks: Mutex<HashMap<String, Task>>,
    /// A task stopped.
    changed: Condvar,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("namespace", &self.0.namespace)
            .finish()
    }
}

/// What a task is.
enum Kind {
    /// An app image: a guest at start.
    Guest {
        plan: GuestPlan,
        /// The kernel, in the mounted image.
        kernel: PathBuf,
    },
    /// A Kubernetes pod's sandbox (its "pause" container): only its network namespace,
    /// held for the pod's guests.
    Sandbox,
}

enum State {
    Created,
    /// A guest runs (None: a sandbox, which has none).
    Running(Option<Running>),
    Stopped {
        exit_status: u32,
        exited_at: Timestamp,
    },
}

struct Task {
    bundle: PathBuf,
    stdin: String,
    stdout: String,
    stderr: String,
    kind: Kind,
    /// The task's stdout, opened at create (its reader is there then), until start.
    stdout_file: Option<std::fs::File>,
    /// The image's root file system, if the shim mounted it.
    rootfs: Option<PathBuf>,
    holder: Option<Holder>,
    /// One guest per network namespace.
    netns_claim: Option<NetnsClaim>,
    state: State,
    /// The signal a kill sent it, which decides its exit status.
    killed_by: Option<u32>,
}

impl Task {
    fn pid(&self) -> u32 {
        self.holder
            .as_ref()
            .map_or_else(std::process::id, Holder::pid)
    }

    /// Take away what create made: the holder, the claim, the mount.
    fn release(&mut self) {
        if let Some(holder) = self.holder.take() {
            holder.stop();
        }
        self.netns_claim = None;
        if let Some(rootfs) = self.rootfs.take() {
            rootfs::unmount(&rootfs);
        }
    }
}

impl Shared {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(err) = self.publisher.publish(
            containerd_shim::Context::default(),
            topic,
            &self.namespace,
            event,
        ) {
            log::warn!("publishing {topic}: {err}");
        }
    }

    fn tasks(&self) -> MutexGuard<'_, HashMap<String, Task>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The guest of task `id` ended (its thread, after destroying it).
    fn guest_ended(&self, id: &str, ending: Ending) {
        let mut tasks = self.tasks();
        let Some(task) = tasks.get_mut(id) else {
            return;
        };
        let exit_status = task
            .killed_by
            .map_or_else(|| guest::exit_status(ending), |signal| 128 + signal);
        log::info!("task {id}: guest ended ({ending:?}), exit status {exit_status}");
        self.stop(id, task, exit_status);
    }

    fn stop(&self, id: &str, task: &mut Task, exit_status: u32) {
        let exited_at = now();
        task.state = State::Stopped {
            exit_status,
            exited_at: exited_at.clone(),
        };
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: id.to_owned(),
                id: id.to_owned(),
                pid: task.pid(),
                exit_status,
                exited_at: MessageField::some(exited_at),
                ..Default::default()
            }),
        );
        self.changed.notify_all();
    }
}

/// Only the init process of a task: exec'd processes are not supported.
fn check_exec(exec_id: &str) -> TtrpcResult<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(status(
            Code::UNIMPLEMENTED,
            "exec is not supported by the lightvm runtime: a unikernel has one program",
        ))
    }
}

fn not_found(id: &str) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("task {id} not found"))
}

/// A path containerd gave for a stdio stream: a fifo (no scheme), or a `file://` URI.
fn stdio_path(text: &str) -> TtrpcResult<Option<PathBuf>> {
    if text.is_empty() {
        return Ok(None);
    }
    if let Some(path) = text.strip_prefix("file://") {
        return Ok(Some(PathBuf::from(path)));
    }
    if text.contains("://") {
        return Err(status(
            Code::INVALID_ARGUMENT,
            format!("stdout {text:?}: only fifos and file:// are supported"),
        ));
    }
    Ok(Some(PathBuf::from(text)))
}

impl Tasks {
    /// Make a task (no guest yet). On an error nothing is left.
    fn make(&self, req: &api::CreateTaskRequest) -> Result<Task, String> {
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(bundle.join("config.json"))
            .map_err(|err| format!("{}/config.json: {err}", bundle.display()))?;
        let sandbox = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get("io.kubernetes.cri.container-type"))
            .is_some_and(|kind| kind == "sandbox");
        let mut task = Task {
            bundle: bundle.clone(),
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            kind: Kind::Sandbox,
            stdout_file: None,
            rootfs: None,
            holder: None,
            netns_claim: None,
            state: State::Created,
            killed_by: None,
        };
        // From here on, an error releases what was made.
        let result = (|| -> Result<(), String> {
            let network = if sandbox {
                spec::network(&spec)
            } else {
                let rootfs = rootfs::mount(&bundle, &spec, &req.rootfs)?;
                let root = rootfs.path().to_owned();
                task.rootfs = rootfs.mounted();
                let defaults = rootfs::defaults(&root)?;
                let plan = spec::plan(&spec, &defaults).map_err(|err| err.to_string())?;
                let kernel = rootfs::kernel(&root)?;
                let network = plan.network.clone();
                task.kind = Kind::Guest { plan, kernel };
                if let Some(path) = stdio_path(&req.stdout).map_err(|err| err.to_string())? {
                    task.stdout_file = guest::open_stdout(&path)?;
                }
                network
            };
            match network {
                Network::Host => {}
                Network::NewNamespace => {
                    task.holder = Some(spawn_holder(None)?);
                }
                Network::Namespace(path) => {
                    // The sandbox holds the pod's namespace for its guest.
                    if !sandbox {
                        task.netns_claim = Some(NetnsClaim::take(&path, &req.id)?);
                    }
                    task.holder = Some(spawn_holder(Some(&path))?);
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(task),
            Err(err) => {
                task.release();
                Err(err)
            }
        }
    }

    /// Boot task `id`'s guest; the lock on the tasks is held, so that its exit is
    /// reported only after its start.
    fn boot(
        &self,
        id: &str,
        task: &mut Task,
        plan: &GuestPlan,
        kernel: &Path,
    ) -> Result<Running, String> {
        let netns = task.holder.as_ref().map(Holder::netns_path);
        let pod = match &netns {
            Some(path) => podnet::pod_interface(path).map_err(|err| err.to_string())?,
            None => None,
        };
        if netns.is_some() && pod.is_none() {
            log::info!("task {id}: its network namespace has no eth0: no vif");
        }
        let config = spec::guest_config(
            &spec::domain_name(&self.0.namespace, id),
            kernel,
            plan,
            netns.is_some(),
            pod.as_ref(),
        );
        let boot = guest::Boot {
            config,
            stdout: task.stdout_file.take(),
            pod_netns: pod.is_some().then(|| netns.clone()).flatten(),
        };
        let shared = self.0.clone();
        let owner = id.to_owned();
        guest::start(boot, move |ending| shared.guest_ended(&owner, ending))
    }
}

fn spawn_holder(join: Option<&Path>) -> Result<Holder, String> {
    Holder::spawn(join).map_err(|err| format!("the task's process: {err}"))
}

impl containerd_shim::Task for Tasks {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "restoring a checkpoint is not supported",
            ));
        }
        if req.terminal {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "a terminal (ctr run -t) is not supported: a guest's console is its stdout",
            ));
        }
        stdio_path(&req.stdout)?;
        if self.0.tasks().contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("task {} exists", req.id),
            ));
        }
        log::info!("task {}: create in {}", req.id, req.bundle);
        let task = self.make(&req).map_err(|err| {
            log::warn!("task {}: {err}", req.id);
            status(Code::INVALID_ARGUMENT, err)
        })?;
        let pid = task.pid();
        self.0.tasks().insert(req.id.clone(), task);
        self.0.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: false,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        check_exec(&req.exec_id)?;
        let mut tasks = self.0.tasks();
        let task = tasks.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if !matches!(task.state, State::Created) {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("task {} was started already", req.id),
            ));
        }
        if let Kind::Guest { plan, kernel } = &task.kind {
            let running = self
                .boot(&req.id, task, &plan.clone(), &kernel.clone())
                .map_err(|err| {
                    log::warn!("task {}: {err}", req.id);
                    status(Code::UNKNOWN, err)
                })?;
            log::info!("task {}: domain {} runs", req.id, running.domid);
            task.state = State::Running(Some(running));
        } else {
            task.state = State::Running(None);
        }
        let pid = task.pid();
        self.0.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        check_exec(&req.exec_id)?;
        let mut tasks = self.0.tasks();
        loop {
            let task = tasks.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            if let State::Stopped {
                exit_status,
                exited_at,
            } = &task.state
            {
                return Ok(api::WaitResponse {
                    exit_status: *exit_status,
                    exited_at: MessageField::some(exited_at.clone()),
                    ..Default::default()
                });
            }
            tasks = self
                .0
                .changed
                .wait(tasks)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        check_exec(&req.exec_id)?;
        let mut tasks = self.0.tasks();
        let task = tasks.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        let signal = req.signal;
        let graceful = match signal as libc::c_int {
            libc::SIGKILL => false,
            libc::SIGTERM | libc::SIGINT | libc::SIGHUP => true,
            _ => {
                return Err(status(
                    Code::INVALID_ARGUMENT,
                    format!(
                        "signal {signal} means nothing to a guest: SIGTERM, SIGINT and SIGHUP \
                         ask it to power off, SIGKILL destroys it"
                    ),
                ));
            }
        };
        let running = match &task.state {
            State::Stopped { .. } => {
                return Err(status(
                    Code::NOT_FOUND,
                    format!("task {}: process already finished", req.id),
                ));
            }
            State::Created => {
                task.killed_by = Some(signal);
                self.0.stop(&req.id, task, 128 + signal);
                return Ok(api::Empty::default());
            }
            State::Running(None) => {
                // A sandbox: nothing runs but its holder.
                task.killed_by = Some(signal);
                self.0.stop(&req.id, task, 128 + signal);
                return Ok(api::Empty::default());
            }
            State::Running(Some(running)) => running.clone(),
        };
        task.killed_by = Some(signal);
        drop(tasks);
        if graceful {
            if let Err(err) = guest::power_off(&running) {
                log::warn!("task {}: {err}; destroying it", req.id);
                guest::kill(&running).map_err(|err| status(Code::UNKNOWN, err))?;
            } else {
                // If it has not ended after the grace time, destroy it.
                let shared = self.0.clone();
                let id = req.id.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(guest::GRACE);
                    let tasks = shared.tasks();
                    if let Some(Task {
                        state: State::Running(Some(now)),
                        ..
                    }) = tasks.get(&id)
                        && now.domid == running.domid
                    {
                        drop(tasks);
                        log::warn!(
                            "task {id}: no power-off after {:?}: destroying it",
                            guest::GRACE
                        );
                        let _ = guest::kill(&running);
                    }
                });
            }
        } else {
            guest::kill(&running).map_err(|err| status(Code::UNKNOWN, err))?;
        }
        Ok(api::Empty::default())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<DeleteResponse> {
        check_exec(&req.exec_id)?;
        let mut tasks = self.0.tasks();
        let task = tasks.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        let (exit_status, exited_at) = match &task.state {
            State::Running(Some(_)) => {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("task {} is running: kill it first", req.id),
                ));
            }
            State::Stopped {
                exit_status,
                exited_at,
            } => (*exit_status, exited_at.clone()),
            State::Created | State::Running(None) => (0, now()),
        };
        let pid = task.pid();
        let mut task = tasks.remove(&req.id).expect("looked up above");
        drop(tasks);
        task.release();
        self.0.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                pid,
                exit_status,
                exited_at: MessageField::some(exited_at.clone()),
                ..Default::default()
            }),
        );
        Ok(DeleteResponse {
            pid,
            exit_status,
            exited_at: MessageField::some(exited_at),
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        check_exec(&req.exec_id)?;
        let tasks = self.0.tasks();
        let task = tasks.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let mut state = api::StateResponse {
            id: req.id.clone(),
            bundle: task.bundle.display().to_string(),
            pid: task.pid(),
            stdin: task.stdin.clone(),
            stdout: task.stdout.clone(),
            stderr: task.stderr.clone(),
            ..Default::default()
        };
        state.status = match &task.state {
            State::Created => Status::CREATED,
            State::Running(_) => Status::RUNNING,
            State::Stopped {
                exit_status,
                exited_at,
            } => {
                state.exit_status = *exit_status;
                state.exited_at = MessageField::some(exited_at.clone());
                Status::STOPPED
            }
        }
        .into();
        Ok(state)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let tasks = self.0.tasks();
        let task = tasks.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        Ok(api::PidsResponse {
            processes: vec![containerd_shim::protos::api::ProcessInfo {
                pid: task.pid(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.0.tasks().get(&req.id).map_or(0, Task::pid);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn close_io(&self, _ctx: &TtrpcContext, _req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // stdin is not passed to guests: nothing to close.
        Ok(api::Empty::default())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.0.tasks().is_empty() {
            self.0.exit.signal();
        }
        Ok(api::Empty::default())
    }
}
