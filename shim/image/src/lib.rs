//! Our apps as OCI images: what `cargo xtask package` writes and the containerd shim
//! reads.
//!
//! An app image is an ordinary OCI image (so `ctr image import` takes it and unpacks it
//! with any snapshotter) with one uncompressed layer holding [`KERNEL_PATH`], the guest's
//! PV ELF, and [`DEFAULTS_PATH`], its [`GuestDefaults`]. The defaults travel as a file in
//! the rootfs, not as image annotations, because containerd hands a runtime the image's
//! config (entrypoint, command) but not its annotations.
//!
//! Pure: [`write_image`] writes to the [`Write`] it is given and does no other I/O.

use std::io::Write;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// The guest kernel inside an app image's rootfs (no leading slash: a rootfs path).
pub const KERNEL_PATH: &str = "lightvm/kernel";
/// The guest's [`GuestDefaults`] inside an app image's rootfs.
pub const DEFAULTS_PATH: &str = "lightvm/lightvm.json";
/// The most vCPUs [`GuestDefaults`] accepts: Xen's PV guests in the lab have far fewer,
/// and a larger number is a typo rather than a wish.
pub const MAX_VCPUS: u32 = 128;

/// Media types of the OCI image spec (v1.0) an app image uses.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// An uncompressed layer: its digest is also its diff ID.
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// The index annotation `ctr image import` names an image by.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The index annotation the OCI image layout spec names a reference by (the tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// How chaos gives the guest its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevMethod {
    /// Xenstore, as xl does.
    Xenstore,
    /// NoXS: device pages shared by xendevd, no Xenstore.
    Noxs,
}

/// `lightvm/lightvm.json`: what the guest gets unless the container's spec says
/// otherwise, e.g. `{"memory_mib":32,"vcpus":1,"dev_method":"xenstore"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestDefaults {
    pub memory_mib: u32,
    pub vcpus: u32,
    pub dev_method: DevMethod,
}

impl GuestDefaults {
    /// Parse and [`validate`](Self::validate) the text of `lightvm/lightvm.json`.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        let defaults: Self = serde_json::from_str(text).map_err(ImageError::Json)?;
        defaults.validate()?;
        Ok(defaults)
    }

    /// Whether every field is usable: memory and vCPUs above zero, at most
    /// [`MAX_VCPUS`] vCPUs.
    pub fn validate(&self) -> Result<(), ImageError> {
        if self.memory_mib == 0 {
            return Err(ImageError::Field {
                field: "memory_mib",
                value: 0,
                expected: "at least 1 (MiB)",
            });
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ImageError::Field {
                field: "vcpus",
                value: u64::from(self.vcpus),
                expected: "from 1 to 128",
            });
        }
        Ok(())
    }

    /// The text of `lightvm/lightvm.json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain numbers and a string serialize")
    }
}

/// What went wrong reading `lightvm.json` or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not JSON of [`GuestDefaults`]' shape (serde's message names the field: unknown,
    /// missing or of the wrong type).
    #[error("{DEFAULTS_PATH}: {0}")]
    Json(#[source] serde_json::Error),
    #[error("{DEFAULTS_PATH}: {field} is {value}, expected {expected}")]
    Field {
        field: &'static str,
        value: u64,
        expected: &'static str,
    },
    #[error("image name `{name}`: {reason}")]
    Name { name: String, reason: &'static str },
    #[error("writing the image archive: {0}")]
    Write(#[from] std::io::Error),
}

/// An app image to write.
#[derive(Debug, Clone)]
pub struct Image<'a> {
    /// The full reference, e.g. `docker.io/lightvm/hello:latest` ([`app_image_name`]).
    pub name: String,
    /// The guest's PV ELF.
    pub kernel: &'a [u8],
    pub defaults: GuestDefaults,
    /// The guest's default arguments: the image config's `Cmd`, which `ctr run … IMAGE
    /// ID ARGS…` replaces.
    pub args: Vec<String>,
}

/// The name `cargo xtask package` gives an app's image.
pub fn app_image_name(app: &str) -> String {
    format!("docker.io/lightvm/{app}:latest")
}

/// A blob of the image: its digest (`sha256:…`) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

impl Blob {
    fn of(data: &[u8]) -> Self {
        Self {
            digest: format!("sha256:{}", hex(&Sha256::digest(data))),
            size: data.len() as u64,
        }
    }

    /// The file of this blob in an OCI image layout.
    pub fn path(&self) -> String {
        format!("blobs/sha256/{}", self.hex())
    }

    fn hex(&self) -> &str {
        self.digest
            .strip_prefix("sha256:")
            .expect("every blob digest is sha256")
    }

    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        json!({ "mediaType": media_type, "digest": self.digest, "size": self.size })
    }
}

/// What [`write_image`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The manifest: its digest is the image's, as `ctr image ls` shows it.
    pub manifest: Blob,
    pub config: Blob,
    pub layer: Blob,
    /// The bytes of the whole archive.
    pub archive_size: u64,
}

/// Write `image` to `out` as an OCI image layout in a tar archive (`oci-layout`,
/// `index.json`, `blobs/sha256/…`), for `ctr image import`. The same image gives the same
/// bytes: entries sorted, owned by root, dated 0.
pub fn write_image(out: impl Write, image: &Image<'_>) -> Result<Written, ImageError> {
    let tag = tag_of(&image.name)?;
    image.defaults.validate()?;

    let layer_bytes = layer(image.kernel, &image.defaults)?;
    let layer = Blob::of(&layer_bytes);
    let config_bytes = to_bytes(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [format!("/{KERNEL_PATH}")],
            "Cmd": image.args,
        },
        "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
    }));
    let config = Blob::of(&config_bytes);
    let manifest_bytes = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config.descriptor(MEDIA_TYPE_CONFIG),
        "layers": [layer.descriptor(MEDIA_TYPE_LAYER)],
    }));
    let manifest = Blob::of(&manifest_bytes);
    let mut manifest_descriptor = manifest.descriptor(MEDIA_TYPE_MANIFEST);
    manifest_descriptor["platform"] = json!({ "architecture": "amd64", "os": "linux" });
    manifest_descriptor["annotations"] = json!({
        ANNOTATION_IMAGE_NAME: image.name,
        ANNOTATION_REF_NAME: tag,
    });
    let index_bytes = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [manifest_descriptor],
    }));

    let mut files: Vec<(String, &[u8])> = vec![
        (layer.path(), &layer_bytes),
        (config.path(), &config_bytes),
        (manifest.path(), &manifest_bytes),
        ("index.json".to_owned(), &index_bytes),
        (
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        ),
    ];
    files.sort();
    // Two blobs with the same digest are the same bytes: one file.
    files.dedup_by(|a, b| a.0 == b.0);

    let mut counted = CountingWriter {
        inner: out,
        count: 0,
    };
    let mut archive = tar::Builder::new(&mut counted);
    for dir in ["blobs/", "blobs/sha256/"] {
        append(&mut archive, dir, tar::EntryType::Directory, 0o755, &[])?;
    }
    for (path, data) in &files {
        append(&mut archive, path, tar::EntryType::Regular, 0o644, data)?;
    }
    archive.into_inner()?.flush()?;
    Ok(Written {
        manifest,
        config,
        layer,
        archive_size: counted.count,
    })
}

/// The layer: `lightvm/`, the kernel and the defaults.
fn layer(kernel: &[u8], defaults: &GuestDefaults) -> Result<Vec<u8>, ImageError> {
    let dir = KERNEL_PATH
        .split_once('/')
        .expect("a path in a directory")
        .0;
    let mut archive = tar::Builder::new(Vec::new());
    append(
        &mut archive,
        &format!("{dir}/"),
        tar::EntryType::Directory,
        0o755,
        &[],
    )?;
    append(
        &mut archive,
        KERNEL_PATH,
        tar::EntryType::Regular,
        0o755,
        kernel,
    )?;
    append(
        &mut archive,
        DEFAULTS_PATH,
        tar::EntryType::Regular,
        0o644,
        defaults.to_json().as_bytes(),
    )?;
    Ok(archive.into_inner()?)
}

/// One entry owned by root and dated 0, so the same input gives the same archive.
fn append<W: Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    archive.append_data(&mut header, path, data)
}

/// The tag of `name` (`REPOSITORY:TAG`), which must be a reference containerd accepts:
/// lowercase path components, a tag of letters, digits, `_`, `.` and `-`.
fn tag_of(name: &str) -> Result<&str, ImageError> {
    let bad = |reason| ImageError::Name {
        name: name.to_owned(),
        reason,
    };
    let (repository, tag) = name
        .rsplit_once(':')
        .filter(|(repository, tag)| !tag.contains('/') && !repository.is_empty())
        .ok_or_else(|| bad("no tag (expected REPOSITORY:TAG)"))?;
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !tag_ok {
        return Err(bad(
            "the tag must be 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`",
        ));
    }
    let component_ok = |component: &str| {
        !component.is_empty()
            && component
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    // The first part may be a registry with a port (`localhost:5000/…`).
    let components_ok =
        repository
            .split('/')
            .enumerate()
            .all(|(i, component)| match component.split_once(':') {
                Some((host, port)) if i == 0 && repository.contains('/') => {
                    component_ok(host)
                        && !port.is_empty()
                        && port.bytes().all(|b| b.is_ascii_digit())
                }
                _ => component_ok(component),
            });
    if !components_ok {
        return Err(bad(
            "each `/`-separated part of the repository must be non-empty lowercase letters, \
             digits, `.`, `_` or `-` (the first may end in `:PORT`)",
        ));
    }
    Ok(tag)
}

fn to_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value serializes")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts what goes through, for [`Written::archive_size`].
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
