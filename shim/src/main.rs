//! `containerd-shim-lightvm-v1`: containerd's shim v2 for runtime
//! `io.containerd.lightvm.v1`. containerd runs it (`start`, `delete`, then as the
//! task service on a ttrpc socket); each task is an app image booted as a Xen PV guest
//! through the chaos library. See the README's "containerd and Kubernetes".

mod guest;
mod holder;
mod podnet;
mod rootfs;
mod service;
mod spec;

/// What `--help` says: containerd runs this program, people do not.
const HELP: &str =
    "containerd-shim-lightvm-v1: containerd's shim for runtime io.containerd.lightvm.v1
(app images made by `cargo xtask package` booted as Xen PV guests through chaos).

containerd runs it; put it on containerd's PATH and run images with
  ctr image import target/oci/APP.tar
  ctr run --rm --runtime io.containerd.lightvm.v1 docker.io/lightvm/APP:latest ID [ARGS…]
For Kubernetes, a runtime in containerd's config.toml and a RuntimeClass: see the
README's \"containerd and Kubernetes\". Its log is in containerd's.";

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some(holder::HOLD) => holder::hold(&args.next().unwrap_or_default()),
        Some("-h" | "--help" | "help") => {
            println!("{HELP}");
            return;
        }
        Some("--version") => {
            println!("containerd-shim-lightvm-v1 {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        _ => {}
    }
    containerd_shim::run::<service::Manager>(
        service::RUNTIME,
        Some(containerd_shim::Config {
            // The shim waits for its own children (the holders, `ip` and `tc`): a reaper
            // thread would take their exit statuses from under `Command::output`.
            no_reaper: true,
            no_sub_reaper: true,
            ..Default::default()
        }),
    );
}
