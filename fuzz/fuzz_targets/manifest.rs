//! The manifest decoder (`Manifest::decode`) on arbitrary bytes, as a node runs
//! it on a manifest a peer sent. Must never panic; a manifest it accepts must be
//! consistent (chunk ranges tile the file, directory names sorted and unique),
//! round-trip, and be the one canonical encoding of its value, so that its file
//! id (the hash of the bytes) is the same id `Manifest::id` computes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quic_peer::proto::manifest::{
    Manifest, MAX_CHUNK_SIZE, MAX_DIR_ENTRIES, MAX_MANIFEST_SIZE, MAX_NAME_LEN, MIN_CHUNK_SIZE,
};
use quic_peer::proto::Hash;

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
}

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::decode(data) else {
        return;
    };
    let bytes = m.encode();
    assert!(bytes.len() <= MAX_MANIFEST_SIZE);
    assert_eq!(
        Manifest::decode(&bytes).expect("re-encoded manifest decodes"),
        m
    );
    assert_eq!(bytes, data, "a non-canonical encoding was accepted");
    let id = m.id();
    assert_eq!(id, Hash::of(data));
    assert_eq!(id.to_string().parse::<Hash>().expect("id text parses"), id);
    assert!(name_ok(m.name()));
    if let Manifest::Sealed(s) = &m {
        assert_eq!(s.version, quic_peer::proto::sealed::VERSION);
        assert!(s.meta.len() <= quic_peer::proto::sealed::MAX_META_LEN);
    }
    match &m {
        Manifest::File(f)
        | Manifest::Sealed(quic_peer::proto::manifest::SealedManifest { body: f, .. }) => {
            assert!((MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&f.chunk_size));
            let mut end = 0u64;
            for i in 0..f.chunks.len() {
                let (offset, len) = f.chunk_range(i);
                assert_eq!(offset, end);
                assert!(len > 0 && len <= f.chunk_size as usize);
                end += len as u64;
            }
            assert_eq!(end, f.size);
        }
        Manifest::Dir(d) => {
            assert!(d.entries.len() <= MAX_DIR_ENTRIES);
            assert!(d.entries.iter().all(|e| name_ok(&e.name)));
            assert!(d.entries.windows(2).all(|w| w[0].name < w[1].name));
        }
    }
});
