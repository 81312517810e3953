//! The Xen libraries, opened on first use instead of at process start.
//!
//! Linked the usual way, every start of `chaos` loads libxenctrl, libxenguest and
//! libxenstore with the five libraries they need, about 14 ms a process in the lab's
//! dom0 (QEMU TCG; an empty Rust program starts in 34 ms, the same linked against the
//! Xen libraries in 48). A `chaos create` that hands its config to the chaos daemon
//! never calls Xen, so it should not pay for them. bindgen's `extern "C"` blocks become
//! [`lazy_extern!`] items (`cargo xtask codegen` rewrites them): each function keeps its
//! name and signature, and finds its symbol on its first call.

use std::ffi::{CStr, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, Ordering};

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

/// Debian's Xen 4.17 sonames, in the order they are opened (each one's own
/// dependencies, such as libxencall, come with it).
const LIBRARIES: [&str; 5] = [
    "libxenctrl.so.4.17",
    "libxenguest.so.4.17",
    "libxenstore.so.4",
    "libxenevtchn.so.1",
    "libxengnttab.so.1",
];

/// A Xen library could not be opened.
#[derive(Debug, Clone)]
pub struct LoadError(String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (Debian's Xen 4.17 libraries: `apt-get install libxen-dev` or xen-utils-4.17)",
            self.0
        )
    }
}

impl std::error::Error for LoadError {}

static LOADED: OnceLock<Result<Vec<Library>, LoadError>> = OnceLock::new();

/// Open the Xen libraries (once per process). Whoever opens a Xen handle calls this
/// first, so that a missing library is an error rather than a panic at the first call.
pub fn load() -> Result<(), LoadError> {
    LOADED
        .get_or_init(|| {
            LIBRARIES
                .iter()
                .map(|name| {
                    // SAFETY: these libraries' initialisers only set up their own state;
                    // RTLD_NOW finds a missing symbol here rather than at a later call.
                    unsafe { Library::open(Some(*name), RTLD_NOW | RTLD_GLOBAL) }
                        .map_err(|err| LoadError(format!("cannot load {name}: {err}")))
                })
                .collect()
        })
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

/// The address of `name` (NUL-terminated), looked up once and kept in `slot`.
///
/// # Panics
/// If the libraries cannot be loaded or lack `name`: callers open a handle (after
/// [`load`]) before any other call, so this means libraries of another Xen version.
#[doc(hidden)]
pub fn symbol(slot: &AtomicPtr<c_void>, name: &'static [u8]) -> *mut c_void {
    let cached = slot.load(Ordering::Acquire);
    if !cached.is_null() {
        return cached;
    }
    if let Err(err) = load() {
        panic!("{err}");
    }
    let libraries = LOADED
        .get()
        .and_then(|loaded| loaded.as_ref().ok())
        .expect("loaded above");
    let name = CStr::from_bytes_with_nul(name).expect("symbol names end in NUL");
    let found = libraries.iter().find_map(|library| {
        // SAFETY: the symbol is read as an address only; the caller casts it to the
        // function type bindgen gave it from the library's header.
        unsafe { library.get::<*mut c_void>(name.to_bytes_with_nul()) }
            .ok()
            .map(|symbol| *symbol)
    });
    let Some(address) = found.filter(|address| !address.is_null()) else {
        panic!(
            "{} is not in Xen's libraries {LIBRARIES:?}: not Xen 4.17?",
            name.to_string_lossy()
        );
    };
    slot.store(address, Ordering::Release);
    address
}

/// bindgen's `extern "C"` items, each as a function of the same name and signature that
/// calls the library's symbol (see the module's documentation). Variadic functions have
/// no such wrapper in stable Rust; none is called.
macro_rules! lazy_extern {
    ($(#[$attr:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;) => {
        $(#[$attr])*
        /// # Safety
        /// As the C function's.
        pub unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
            static SLOT: ::std::sync::atomic::AtomicPtr<::std::ffi::c_void> =
                ::std::sync::atomic::AtomicPtr::new(::std::ptr::null_mut());
            let address = $crate::lazy::symbol(&SLOT, concat!(stringify!($name), "\0").as_bytes());
            // SAFETY: `address` is the library's `$name`, whose C signature bindgen
            // translated into this one.
            let function: unsafe extern "C" fn($($ty),*) $(-> $ret)? =
                unsafe { ::std::mem::transmute::<*mut ::std::ffi::c_void, _>(address) };
            // SAFETY: the caller upholds the C function's contract.
            unsafe { function($($arg),*) }
        }
    };
    ($(#[$attr:meta])* pub fn $name:ident($($variadic:tt)*) $(-> $ret:ty)?;) => {};
}
