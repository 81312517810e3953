//! The written layout read back with the `tar` crate's reader and checked against the
//! OCI image spec's types (`oci-spec`, a parser of its own).

use std::collections::BTreeMap;
use std::io::Read;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256};

use super::*;

/// Bytes that stand for a kernel: the writer does not look inside.
const KERNEL: &[u8] = b"\x7fELF not really a kernel, with a \0 and \xff";

fn defaults() -> GuestDefaults {
    GuestDefaults {
        memory_mib: 32,
        vcpus: 1,
        dev_method: DevMethod::Xenstore,
    }
}

fn hello(args: &[&str]) -> Image<'static> {
    Image {
        name: app_image_name("hello"),
        kernel: KERNEL,
        defaults: defaults(),
        args: args.iter().map(|&arg| arg.to_owned()).collect(),
    }
}

fn write(image: &Image<'_>) -> (Vec<u8>, Written) {
    let mut out = Vec::new();
    let written = write_image(&mut out, image).expect("the image is written");
    (out, written)
}

/// One entry of a tar archive as read back.
#[derive(Debug)]
struct Entry {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    data: Vec<u8>,
}

/// Every entry of `archive` in archive order (path, entry).
fn read_tar(archive: &[u8]) -> Vec<(String, Entry)> {
    let mut reader = tar::Archive::new(archive);
    let mut entries = Vec::new();
    for entry in reader.entries().expect("a tar archive") {
        let mut entry = entry.expect("a tar entry");
        let path = entry.path().expect("a path").to_string_lossy().into_owned();
        let header = entry.header();
        let (kind, mode, uid, gid, mtime) = (
            header.entry_type(),
            header.mode().expect("a mode"),
            header.uid().expect("a uid"),
            header.gid().expect("a gid"),
            header.mtime().expect("an mtime"),
        );
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("the entry's data");
        entries.push((
            path,
            Entry {
                kind,
                mode,
                uid,
                gid,
                mtime,
                data,
            },
        ));
    }
    entries
}

fn files(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    read_tar(archive)
        .into_iter()
        .filter(|(_, entry)| entry.kind == tar::EntryType::Regular)
        .map(|(path, entry)| (path, entry.data))
        .collect()
}

/// The blob a descriptor points at, after checking that its digest and size are those
/// of the bytes.
fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, descriptor: &Descriptor) -> &'a [u8] {
    let digest = descriptor.digest();
    assert_eq!(digest.algorithm().to_string(), "sha256", "{digest}");
    let path = format!("blobs/sha256/{}", digest.digest());
    let data = files
        .get(&path)
        .unwrap_or_else(|| panic!("no blob {path} for {digest}"));
    let actual: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(actual, digest.digest(), "the digest of {path}");
    assert_eq!(descriptor.size(), data.len() as u64, "the size of {path}");
    data
}

/// The layout of an image, every descriptor checked against its blob.
struct Layout {
    files: BTreeMap<String, Vec<u8>>,
    index: ImageIndex,
    manifest: ImageManifest,
    config: ImageConfiguration,
    config_json: serde_json::Value,
    layer: Vec<u8>,
}

fn layout(archive: &[u8]) -> Layout {
    let files = files(archive);
    let index = ImageIndex::from_reader(&files["index.json"][..]).expect("index.json");
    assert_eq!(index.manifests().len(), 1, "one manifest in the index");
    let manifest_descriptor = &index.manifests()[0];
    let manifest = ImageManifest::from_reader(blob(&files, manifest_descriptor)).expect("manifest");
    let config_bytes = blob(&files, manifest.config());
    let config = ImageConfiguration::from_reader(config_bytes).expect("config");
    let config_json = serde_json::from_slice(config_bytes).expect("config JSON");
    assert_eq!(manifest.layers().len(), 1, "one layer");
    let layer = blob(&files, &manifest.layers()[0]).to_vec();
    Layout {
        index,
        manifest,
        config,
        config_json,
        layer,
        files,
    }
}

#[test]
fn defaults_parse_from_their_documented_json() {
    let text = r#"{"memory_mib":32,"vcpus":1,"dev_method":"xenstore"}"#;
    assert_eq!(GuestDefaults::parse(text).unwrap(), defaults());
    assert_eq!(defaults().to_json(), text);
    let noxs =
        GuestDefaults::parse(r#"{"memory_mib":64,"vcpus":128,"dev_method":"noxs"}"#).unwrap();
    assert_eq!(noxs.dev_method, DevMethod::Noxs);
    assert_eq!(noxs.vcpus, MAX_VCPUS);
    assert_eq!(GuestDefaults::parse(&noxs.to_json()).unwrap(), noxs);
}

#[test]
fn bad_defaults_are_refused_naming_the_field() {
    let err = |text: &str| GuestDefaults::parse(text).unwrap_err().to_string();
    let cases = [
        (
            r#"{"memory_mib":0,"vcpus":1,"dev_method":"xenstore"}"#,
            "lightvm/lightvm.json: memory_mib is 0, expected at least 1",
        ),
        (
            r#"{"memory_mib":32,"vcpus":0,"dev_method":"xenstore"}"#,
            "lightvm/lightvm.json: vcpus is 0, expected from 1 to 128",
        ),
        (
            r#"{"memory_mib":32,"vcpus":129,"dev_method":"xenstore"}"#,
            "lightvm/lightvm.json: vcpus is 129, expected from 1 to 128",
        ),
        (
            r#"{"memory_mib":32,"vcpus":1,"dev_method":"xenstore","disk":"x"}"#,
            "unknown field `disk`",
        ),
        (
            r#"{"memory_mib":32,"dev_method":"xenstore"}"#,
            "missing field `vcpus`",
        ),
        (
            r#"{"memory_mib":32,"vcpus":1,"dev_method":"xl"}"#,
            "unknown variant `xl`, expected `xenstore` or `noxs`",
        ),
        (
            r#"{"memory_mib":-1,"vcpus":1,"dev_method":"xenstore"}"#,
            "invalid value: integer `-1`, expected u32",
        ),
        ("", "lightvm/lightvm.json: EOF while parsing"),
    ];
    for (text, expected) in cases {
        let message = err(text);
        assert!(message.contains(expected), "{text}: {message}");
    }
}

#[test]
fn every_descriptor_matches_its_blob_with_the_right_media_type() {
    let (archive, written) = write(&hello(&["alpha", "beta"]));
    let layout = layout(&archive);
    assert_eq!(
        layout.files["oci-layout"],
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );
    assert_eq!(layout.index.schema_version(), 2);
    assert_eq!(layout.index.media_type(), &Some(MediaType::ImageIndex));
    let manifest_descriptor = &layout.index.manifests()[0];
    assert_eq!(manifest_descriptor.media_type(), &MediaType::ImageManifest);
    assert_eq!(layout.manifest.schema_version(), 2);
    assert_eq!(
        layout.manifest.media_type(),
        &Some(MediaType::ImageManifest)
    );
    assert_eq!(
        layout.manifest.config().media_type(),
        &MediaType::ImageConfig
    );
    assert_eq!(
        layout.manifest.layers()[0].media_type(),
        &MediaType::ImageLayer
    );
    // What write_image reports is what it wrote.
    assert_eq!(
        manifest_descriptor.digest().to_string(),
        written.manifest.digest
    );
    assert_eq!(manifest_descriptor.size(), written.manifest.size);
    assert_eq!(
        layout.manifest.config().digest().to_string(),
        written.config.digest
    );
    assert_eq!(layout.manifest.config().size(), written.config.size);
    assert_eq!(
        layout.manifest.layers()[0].digest().to_string(),
        written.layer.digest
    );
    assert_eq!(written.archive_size, archive.len() as u64);
    // Nothing in blobs/ that no descriptor names.
    let blobs: Vec<&String> = layout
        .files
        .keys()
        .filter(|path| path.starts_with("blobs/"))
        .collect();
    assert_eq!(blobs.len(), 3, "{blobs:?}");
}

#[test]
fn the_index_names_the_image_for_ctr_import() {
    let (archive, _) = write(&hello(&[]));
    let layout = layout(&archive);
    let annotations = layout.index.manifests()[0]
        .annotations()
        .as_ref()
        .expect("annotations");
    assert_eq!(
        annotations[ANNOTATION_IMAGE_NAME],
        "docker.io/lightvm/hello:latest"
    );
    assert_eq!(annotations[ANNOTATION_REF_NAME], "latest");
}

#[test]
fn the_config_runs_the_kernel_with_the_default_args_on_the_uncompressed_layer() {
    let (archive, written) = write(&hello(&["alpha", "beta"]));
    let layout = layout(&archive);
    let config = &layout.config;
    assert_eq!(config.os().to_string(), "linux");
    assert_eq!(config.architecture().to_string(), "amd64");
    assert_eq!(config.rootfs().typ(), "layers");
    // Uncompressed: the diff ID is the layer's digest, and the digest of its bytes.
    assert_eq!(
        config.rootfs().diff_ids(),
        std::slice::from_ref(&written.layer.digest)
    );
    let process = config.config().as_ref().expect("a config section");
    assert_eq!(
        process.entrypoint().as_deref(),
        Some(&["/lightvm/kernel".to_owned()][..])
    );
    assert_eq!(
        process.cmd().as_deref(),
        Some(&["alpha".to_owned(), "beta".to_owned()][..])
    );
    // The keys as containerd reads them (Docker's capitalised names).
    assert_eq!(
        layout.config_json["config"]["Entrypoint"],
        json!(["/lightvm/kernel"])
    );
    assert_eq!(
        layout.config_json["config"]["Cmd"],
        json!(["alpha", "beta"])
    );
}

#[test]
fn the_layer_holds_the_kernel_and_the_defaults() {
    let image = Image {
        defaults: GuestDefaults {
            memory_mib: 48,
            vcpus: 2,
            dev_method: DevMethod::Noxs,
        },
        ..hello(&[])
    };
    let (archive, _) = write(&image);
    let layer = read_tar(&layout(&archive).layer);
    let paths: Vec<&str> = layer.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(paths, ["lightvm/", KERNEL_PATH, DEFAULTS_PATH]);
    let (dir, kernel, defaults) = (&layer[0].1, &layer[1].1, &layer[2].1);
    assert_eq!(dir.kind, tar::EntryType::Directory);
    assert_eq!(dir.mode, 0o755);
    assert_eq!(kernel.kind, tar::EntryType::Regular);
    assert_eq!(kernel.mode, 0o755, "the kernel is the entrypoint");
    assert_eq!(kernel.data, KERNEL);
    assert_eq!(defaults.mode, 0o644);
    assert_eq!(
        GuestDefaults::parse(std::str::from_utf8(&defaults.data).unwrap()).unwrap(),
        image.defaults
    );
}

#[test]
fn the_same_image_gives_the_same_bytes() {
    let (first, first_written) = write(&hello(&["alpha"]));
    let (second, second_written) = write(&hello(&["alpha"]));
    assert!(first == second, "two writes of one image differ");
    assert_eq!(first_written, second_written);
    // Entries sorted, owned by root, dated 0: in the archive and in the layer.
    let outer = read_tar(&first);
    let paths: Vec<&str> = outer.iter().map(|(path, _)| path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    assert_eq!(paths[..2], ["blobs/", "blobs/sha256/"]);
    assert_eq!(paths[paths.len() - 2..], ["index.json", "oci-layout"]);
    let layer = read_tar(&layout(&first).layer);
    for (path, entry) in outer.iter().chain(&layer) {
        assert_eq!((entry.uid, entry.gid, entry.mtime), (0, 0, 0), "{path}");
    }
    // The digest follows the content: other args, another config and manifest.
    let (_, other) = write(&hello(&["beta"]));
    assert_eq!(other.layer, first_written.layer);
    assert_ne!(other.config, first_written.config);
    assert_ne!(other.manifest, first_written.manifest);
}

#[test]
fn bad_names_and_defaults_write_nothing() {
    let cases = [
        ("docker.io/lightvm/hello", "no tag"),
        ("docker.io/lightvm/hello:", "the tag must be"),
        ("docker.io/lightvm/hello:-x", "the tag must be"),
        (":latest", "no tag"),
        ("docker.io/lightvm/Hello:latest", "lowercase"),
        ("docker.io//hello:latest", "non-empty"),
    ];
    for (name, expected) in cases {
        let mut out = Vec::new();
        let image = Image {
            name: name.to_owned(),
            ..hello(&[])
        };
        let err = write_image(&mut out, &image).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("image name `{name}`: ")) && err.contains(expected),
            "{name}: {err}"
        );
        assert!(out.is_empty(), "{name}: {} bytes written", out.len());
    }
    let mut out = Vec::new();
    let image = Image {
        defaults: GuestDefaults {
            vcpus: 0,
            ..defaults()
        },
        ..hello(&[])
    };
    let err = write_image(&mut out, &image).unwrap_err().to_string();
    assert!(err.contains("vcpus is 0"), "{err}");
    assert!(out.is_empty());
    // A registry host with a port is a name containerd takes.
    let image = Image {
        name: "localhost:5000/lightvm/hello:v1.2".to_owned(),
        ..hello(&[])
    };
    let (archive, _) = write(&image);
    let annotations = layout(&archive).index.manifests()[0]
        .annotations()
        .clone()
        .unwrap();
    assert_eq!(annotations[ANNOTATION_REF_NAME], "v1.2");
}
