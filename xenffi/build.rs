//! Link the Xen libraries dynamically (Debian's libxen-dev provides the `.so` names).

fn main() {
    for lib in ["xenctrl", "xenguest", "xenstore", "xenevtchn", "xengnttab"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}
