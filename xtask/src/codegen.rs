//! `cargo xtask codegen [--check]`: regenerate checked-in generated code — the Xen
//! library bindings in `xenffi/src/bindings.rs` — or check that it is current.
//!
//! Needs `bindgen` (`cargo install bindgen-cli`, which needs libclang: `apt-get install
//! libclang-dev`) and the Xen headers (`apt-get install libxen-dev`); ordinary builds
//! need neither, since the output is checked in.

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::util::{self, project_root};

/// Functions the toolstack and the device daemon call; bindgen pulls in the types they
/// need (`xc_domain_save`/`restore` bring `struct save_callbacks`/`restore_callbacks`
/// and `xc_stream_type_t`).
const FUNCTIONS: [&str; 4] = [
    "xc_(interface_open|interface_close|domain_create|domain_max_vcpus|domain_setmaxmem|\
     domain_set_memmap_limit|domain_unpause|domain_pause|domain_destroy|domain_shutdown|\
     domain_getinfolist|domain_getinfo_single|evtchn_alloc_unbound|dom_.*|get_max_cpus|physinfo|\
     domain_set_tsc_info|cpuid_apply_policy|domain_sethandle|get_last_error|clear_last_error|\
     error_code_to_desc|domain_save|domain_restore|domain_resume|vcpu_getcontext)",
    "xs_(open|close|daemon_open|transaction_start|transaction_end|write|read|mkdir|rm|\
     set_permissions|get_permissions|introduce_domain|release_domain|get_domain_path|watch|\
     unwatch|read_watch|directory|fileno|check_watch)",
    "xenevtchn_(open|close|fd|bind_unbound_port|bind_interdomain|bind_virq|unbind|notify|pending|\
     unmask)",
    "xengnttab_(open|close|map_grant_ref|map_domain_grant_refs|unmap|grant_copy|set_max_grants)|\
     xengntshr_(open|close|share_pages|share_page_notify|unshare)",
];
const VARS: &str = "XS_.*|XEN_DOMCTL_CDF_.*|XEN_DOMINF_.*|SHUTDOWN_.*|XC_DOM_.*|XEN_X86_.*|\
                    XEN_DOMCTL_INTERFACE_VERSION|DOMID_.*|XEN_DOMCTL_GRANT_.*|XEN_DOMCTL_CONFIG_.*|\
                    XEN_SYSCTL_PHYSCAP_.*|VIRQ_DOM_EXC|GNTCOPY_.*|GNTST_.*|XCFLAGS_.*|\
                    XGS_POLICY_.*";

#[derive(Debug, Args)]
pub struct CodegenArgs {
    /// Fail if the checked-in output differs from what the headers give, instead of
    /// rewriting it.
    #[arg(long)]
    pub check: bool,
}

impl CodegenArgs {
    pub fn run(&self) -> Result<()> {
        util::which("bindgen").context(
            "bindgen is not installed: `cargo install bindgen-cli` (needs `apt-get install libclang-dev`)",
        )?;
        let dir = project_root().join("xenffi");
        let target = dir.join("src/bindings.rs");
        let fresh = std::env::temp_dir().join(format!("xenffi-bindings-{}.rs", std::process::id()));
        let mut cmd = Command::new("bindgen");
        cmd.arg(dir.join("wrapper.h"));
        for functions in FUNCTIONS {
            cmd.args(["--allowlist-function", functions]);
        }
        cmd.args(["--allowlist-var", VARS]);
        cmd.arg("-o").arg(&fresh).args(["--", "-I/usr/include"]);
        util::run(&mut cmd)?;
        let generated = std::fs::read_to_string(&fresh).context("reading bindgen's output")?;
        // Functions are resolved on first call (`xenffi/src/lazy.rs`), not linked.
        let generated = generated.replace("unsafe extern \"C\" {", "lazy_extern! {");
        let _ = std::fs::remove_file(&fresh);
        let current = std::fs::read_to_string(&target).unwrap_or_default();
        if generated == current {
            eprintln!("codegen: {} is current", target.display());
            return Ok(());
        }
        if self.check {
            bail!("{} is stale: run `cargo xtask codegen`", target.display());
        }
        std::fs::write(&target, generated)
            .with_context(|| format!("writing {}", target.display()))?;
        eprintln!("codegen: wrote {}", target.display());
        Ok(())
    }
}
