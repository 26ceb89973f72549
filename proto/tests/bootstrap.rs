//! Regenerates `src/generated/` from `proto/` with protox and tonic's prost codegen, and fails if
//! the checked-in code differs. On drift it writes the new files, so a second run (and a commit)
//! fixes it: users and CI never need `protoc`.

use std::path::{Path, PathBuf};

use prost::Message;

#[test]
fn generated_code_is_up_to_date() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let proto_dir = root.join("proto");
    let generated = root.join("src/generated");
    let scratch = tempfile::tempdir().expect("tempdir");

    let protos = [
        "autoheal/v1/agent.proto",
        "autoheal/v1/fleet.proto",
        "autoheal/v1/enroll.proto",
    ];
    let fds = protox::compile(protos, [&proto_dir]).expect("protos compile");
    let descriptor = fds.encode_to_vec();
    std::fs::write(
        scratch.path().join("autoheal_v1_descriptor.bin"),
        &descriptor,
    )
    .expect("write descriptor");

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The RPC is called Connect: the generated `connect` constructor would clash with it, and
        // we build channels ourselves (tls::channel) anyway.
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(scratch.path())
        .compile_fds(fds)
        .expect("codegen");

    let mut drifted = Vec::new();
    for name in ["autoheal.v1.rs", "autoheal_v1_descriptor.bin"] {
        let fresh = std::fs::read(scratch.path().join(name)).expect("generated file");
        let target = generated.join(name);
        if std::fs::read(&target).ok().as_deref() != Some(fresh.as_slice()) {
            std::fs::write(&target, &fresh).expect("write generated file");
            drifted.push(relative(&root, &target));
        }
    }
    assert!(
        drifted.is_empty(),
        "generated code was out of date and has been rewritten: {drifted:?}; \
         review and commit the result"
    );
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}
