// Copyright 2016 Pierre-Étienne Meunier
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.
//

// http://cvsweb.openbsd.org/cgi-bin/cvsweb/src/usr.bin/ssh/PROTOCOL.chacha20poly1305?annotate=HEAD

// portvakt patch 5 (see PATCHES.md): the construction is computed with the
// RustCrypto `chacha20` (legacy 64-bit nonce) and `poly1305` crates, whose
// AVX2 code paths are chosen at run time. aws-lc's openssh variant was half
// the speed here: its Poly1305 runs scalar code and took as long as ChaCha20.
//
// portvakt patch 13: with the `openssl-chacha20-poly1305` feature, the
// payload's ChaCha20 and the Poly1305 tag come from the system's OpenSSL 3
// libcrypto (see `libcrypto` below), about twice as fast again; the crates
// stay for the packet length and as the fallback.

use chacha20::ChaCha20Legacy;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use poly1305::Poly1305;
use poly1305::universal_hash::KeyInit;
use subtle::ConstantTimeEq;

use super::super::Error;
#[cfg(feature = "openssl-chacha20-poly1305")]
use super::PACKET_LENGTH_LEN;
use crate::mac::MacAlgorithm;

#[cfg(feature = "openssl-chacha20-poly1305")]
mod libcrypto;

const KEY_LEN: usize = 64;
const TAG_LEN: usize = 16;

/// K_2 (the first half) encrypts the payload and makes the Poly1305 key;
/// K_1 (the second half) encrypts the packet length (PROTOCOL.chacha20poly1305).
#[derive(Clone)]
struct Keys {
    main: [u8; 32],
    header: [u8; 32],
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.main = [0; 32];
        self.header = [0; 32];
    }
}

impl Keys {
    fn new(k: &[u8]) -> Self {
        let mut main = [0u8; 32];
        let mut header = [0u8; 32];
        #[allow(clippy::indexing_slicing)] // KEY_LEN bytes, checked by the caller
        {
            main.copy_from_slice(&k[..32]);
            header.copy_from_slice(&k[32..64]);
        }
        Keys { main, header }
    }

    /// The payload cipher for this packet, and the Poly1305 key it makes
    /// (keystream block 0); the cipher is left at block 1.
    fn main_cipher(&self, sequence_number: u32) -> (ChaCha20Legacy, [u8; 32]) {
        let nonce = u64::from(sequence_number).to_be_bytes();
        let mut c = ChaCha20Legacy::new(&self.main.into(), &nonce.into());
        let mut poly_key = [0u8; 32];
        c.apply_keystream(&mut poly_key);
        c.seek(64u64);
        (c, poly_key)
    }

    fn crypt_length(&self, sequence_number: u32, length: &mut [u8]) {
        let nonce = u64::from(sequence_number).to_be_bytes();
        ChaCha20Legacy::new(&self.header.into(), &nonce.into()).apply_keystream(length);
    }
}

/// See [`super::chacha20_poly1305_uses_libcrypto`].
pub(crate) fn uses_libcrypto() -> bool {
    #[cfg(feature = "openssl-chacha20-poly1305")]
    return libcrypto::Payload::new(&[0; 32]).is_some();
    #[cfg(not(feature = "openssl-chacha20-poly1305"))]
    false
}

pub struct SshChacha20Poly1305Cipher {}

impl super::Cipher for SshChacha20Poly1305Cipher {
    fn key_len(&self) -> usize {
        KEY_LEN
    }

    fn make_opening_key(
        &self,
        k: &[u8],
        _: &[u8],
        _: &[u8],
        _: &dyn MacAlgorithm,
    ) -> Box<dyn super::OpeningKey + Send> {
        Box::new(OpeningKey::new(k))
    }

    fn make_sealing_key(
        &self,
        k: &[u8],
        _: &[u8],
        _: &[u8],
        _: &dyn MacAlgorithm,
    ) -> Box<dyn super::SealingKey + Send> {
        Box::new(SealingKey::new(k))
    }
}

pub struct OpeningKey {
    keys: Keys,
    #[cfg(feature = "openssl-chacha20-poly1305")]
    libcrypto: Option<libcrypto::Payload>,
}

pub struct SealingKey {
    keys: Keys,
    #[cfg(feature = "openssl-chacha20-poly1305")]
    libcrypto: Option<libcrypto::Payload>,
}

impl OpeningKey {
    fn new(k: &[u8]) -> Self {
        let keys = Keys::new(k);
        OpeningKey {
            #[cfg(feature = "openssl-chacha20-poly1305")]
            libcrypto: libcrypto::Payload::new(&keys.main),
            keys,
        }
    }

    /// Opens with the RustCrypto crates only (what the `libcrypto` path is
    /// checked against).
    #[cfg(test)]
    fn rustcrypto(k: &[u8]) -> Self {
        OpeningKey {
            keys: Keys::new(k),
            #[cfg(feature = "openssl-chacha20-poly1305")]
            libcrypto: None,
        }
    }
}

impl SealingKey {
    fn new(k: &[u8]) -> Self {
        let keys = Keys::new(k);
        SealingKey {
            #[cfg(feature = "openssl-chacha20-poly1305")]
            libcrypto: libcrypto::Payload::new(&keys.main),
            keys,
        }
    }

    #[cfg(test)]
    fn rustcrypto(k: &[u8]) -> Self {
        SealingKey {
            keys: Keys::new(k),
            #[cfg(feature = "openssl-chacha20-poly1305")]
            libcrypto: None,
        }
    }
}

impl super::OpeningKey for OpeningKey {
    fn decrypt_packet_length(
        &self,
        sequence_number: u32,
        encrypted_packet_length: &[u8],
    ) -> [u8; 4] {
        let mut length = [0u8; 4];
        length.copy_from_slice(encrypted_packet_length.get(..4).unwrap_or(&[0; 4]));
        self.keys.crypt_length(sequence_number, &mut length);
        length
    }

    fn tag_len(&self) -> usize {
        TAG_LEN
    }

    fn open<'a>(
        &mut self,
        sequence_number: u32,
        ciphertext_and_tag: &'a mut [u8],
    ) -> Result<&'a [u8], Error> {
        let ciphertext_len = ciphertext_and_tag
            .len()
            .checked_sub(TAG_LEN)
            .filter(|l| *l >= super::PACKET_LENGTH_LEN)
            .ok_or(Error::DecryptionError)?;
        let (packet, tag) = ciphertext_and_tag.split_at_mut(ciphertext_len);
        #[cfg(feature = "openssl-chacha20-poly1305")]
        if let Some(libcrypto) = self.libcrypto.as_mut() {
            match libcrypto.open(sequence_number, packet, tag) {
                Ok(()) => {
                    #[allow(clippy::indexing_slicing)] // at least PACKET_LENGTH_LEN, checked above
                    return Ok(&packet[super::PACKET_LENGTH_LEN..]);
                }
                Err(libcrypto::Failed::Refused) => return Err(Error::DecryptionError),
                // Nothing was decrypted yet: the crates below open it.
                Err(libcrypto::Failed::Untouched) => self.libcrypto = None,
                Err(libcrypto::Failed::Touched) => {
                    self.libcrypto = None;
                    return Err(Error::DecryptionError);
                }
            }
        }
        let (mut cipher, poly_key) = self.keys.main_cipher(sequence_number);
        let expected = Poly1305::new(&poly_key.into()).compute_unpadded(packet);
        if !bool::from(expected.as_slice().ct_eq(tag)) {
            return Err(Error::DecryptionError);
        }
        #[allow(clippy::indexing_slicing)] // at least PACKET_LENGTH_LEN, checked above
        let payload = &mut packet[super::PACKET_LENGTH_LEN..];
        cipher.apply_keystream(payload);
        Ok(payload)
    }
}

impl super::SealingKey for SealingKey {
    fn padding_length(&self, payload: &[u8]) -> usize {
        let block_size = 8;
        let extra_len = super::PACKET_LENGTH_LEN + super::PADDING_LENGTH_LEN;
        let padding_len = if payload.len() + extra_len <= super::MINIMUM_PACKET_LEN {
            super::MINIMUM_PACKET_LEN - payload.len() - super::PADDING_LENGTH_LEN
        } else {
            block_size - ((super::PADDING_LENGTH_LEN + payload.len()) % block_size)
        };
        if padding_len < super::PACKET_LENGTH_LEN {
            padding_len + block_size
        } else {
            padding_len
        }
    }

    // As explained in "SSH via CTR mode with stateful decryption" in
    // https://openvpn.net/papers/ssh-security.pdf, the padding doesn't need to
    // be random because we're doing stateful counter-mode encryption. Use
    // fixed padding to avoid PRNG overhead.
    fn fill_padding(&self, padding_out: &mut [u8]) {
        for padding_byte in padding_out {
            *padding_byte = 0;
        }
    }

    fn tag_len(&self) -> usize {
        TAG_LEN
    }

    fn seal(
        &mut self,
        sequence_number: u32,
        plaintext_in_ciphertext_out: &mut [u8],
        tag: &mut [u8],
    ) {
        let packet = plaintext_in_ciphertext_out;
        let length_len = super::PACKET_LENGTH_LEN.min(packet.len());
        #[allow(clippy::indexing_slicing)] // length_len <= packet.len()
        self.keys.crypt_length(sequence_number, &mut packet[..length_len]);
        #[cfg(feature = "openssl-chacha20-poly1305")]
        if let Some(libcrypto) = self.libcrypto.as_mut() {
            match libcrypto.seal(sequence_number, packet, tag) {
                Ok(()) => return,
                // Part of the payload may still be plaintext: send a packet
                // that holds none of it and that no peer accepts (its tag
                // cannot match), which ends the connection.
                Err(libcrypto::Failed::Touched) => {
                    self.libcrypto = None;
                    packet.fill(0);
                    tag.fill(0);
                    return;
                }
                // Nothing was encrypted yet: the crates below seal it.
                Err(libcrypto::Failed::Untouched | libcrypto::Failed::Refused) => {
                    self.libcrypto = None;
                }
            }
        }
        let (mut cipher, poly_key) = self.keys.main_cipher(sequence_number);
        #[allow(clippy::indexing_slicing)] // length_len <= packet.len()
        cipher.apply_keystream(&mut packet[length_len..]);
        let t = Poly1305::new(&poly_key.into()).compute_unpadded(packet);
        if let Some(out) = tag.get_mut(..TAG_LEN) {
            out.copy_from_slice(&t);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::super::{OpeningKey as _, PACKET_LENGTH_LEN, SealingKey as _};
    use super::{OpeningKey, SealingKey, TAG_LEN};
    use crate::Error;

    /// Seals `packet` (`packet_length || rest`, as russh hands it over)
    /// with our implementation (libcrypto's when built with it); returns
    /// the ciphertext and the tag.
    fn seal(key: &[u8; 64], sequence_number: u32, packet: &[u8]) -> (Vec<u8>, [u8; TAG_LEN]) {
        seal_with(SealingKey::new(key), sequence_number, packet)
    }

    fn seal_with(
        mut key: SealingKey,
        sequence_number: u32,
        packet: &[u8],
    ) -> (Vec<u8>, [u8; TAG_LEN]) {
        let mut out = packet.to_vec();
        let mut tag = [0u8; TAG_LEN];
        key.seal(sequence_number, &mut out, &mut tag);
        (out, tag)
    }

    /// Opens `ciphertext || tag` with our implementation; the payload.
    fn open(key: &[u8; 64], sequence_number: u32, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        open_with(OpeningKey::new(key), sequence_number, sealed)
    }

    fn open_with(
        mut key: OpeningKey,
        sequence_number: u32,
        sealed: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let mut buf = sealed.to_vec();
        key.open(sequence_number, &mut buf).map(|p| p.to_vec())
    }

    /// A packet as russh builds it: `packet_length || padding_length ||
    /// payload || padding`, padded the way this cipher's sealing key says.
    fn packet(payload: &[u8]) -> Vec<u8> {
        let key = SealingKey::new(&[0; 64]);
        let padding = key.padding_length(payload);
        let length = (1 + payload.len() + padding) as u32;
        let mut p = length.to_be_bytes().to_vec();
        p.push(padding as u8);
        p.extend_from_slice(payload);
        p.resize(p.len() + padding, 0);
        p
    }

    fn concat(ciphertext: &[u8], tag: &[u8]) -> Vec<u8> {
        [ciphertext, tag].concat()
    }

    /// Known answers not made by either implementation under test. The
    /// first two are from ring's `tests/aead_chacha20_poly1305_openssh_tests.txt`;
    /// the third (all-ones sequence number, a body over two ChaCha20 blocks)
    /// was computed with OpenSSL's ChaCha20 and Poly1305 through Python's
    /// `cryptography` 48, following PROTOCOL.chacha20poly1305: K_2 =
    /// key[..32], K_1 = key[32..], nonce = sequence number as 64-bit big
    /// endian, length with K_1 at block 0, Poly1305 key = K_2 block 0, body
    /// with K_2 from block 1, tag over the encrypted length and body.
    #[test]
    fn seals_and_opens_fixed_vectors() {
        struct Vector {
            key: [u8; 64],
            sequence_number: u32,
            plaintext: &'static [u8],
            ciphertext: &'static [u8],
            tag: [u8; TAG_LEN],
        }
        let mut counting_key = [0u8; 64];
        for (i, b) in counting_key.iter_mut().enumerate() {
            *b = i as u8;
        }
        let vectors = [
            Vector {
                key: hex_literal::hex!(
                    "247a041f6780baf0de3741aa4436024b6a5169b0eab8a090a291f5900bf566a5"
                    "4ac2c64c0f38cab14a143111bc39d1873013f52f2e92062e375c1a5378ad9b32"
                ),
                sequence_number: 94,
                plaintext: &hex_literal::hex!("000000100f000000000000000000000000000000"),
                ciphertext: &hex_literal::hex!("c87186a24d89e672f37df98a95d0a0653e9f0fe4"),
                tag: hex_literal::hex!("075bc727e855c8d487bb3060c42267cd"),
            },
            Vector {
                key: hex_literal::hex!(
                    "4a3042e117e06543aeb7fc450dab16b8652fe0a79378f78d6cb0c23f50bdbf4a"
                    "c00c92a0b330bd035d6cd3918ff1daeb65d0fe329d88305f0728661dccd7278d"
                ),
                sequence_number: 204,
                plaintext: &hex_literal::hex!(
                    "000000180b6162636465666768696a6b6c0000000000000000000000"
                ),
                ciphertext: &hex_literal::hex!(
                    "60bbfcf8be81835fe6fa7a1e482a0a6fdd8d11599c3786e3c7976893"
                ),
                tag: hex_literal::hex!("411803ef2f1b4187c1019fb47290d0d1"),
            },
            Vector {
                key: counting_key,
                sequence_number: u32::MAX,
                plaintext: &hex_literal::hex!(
                    "0000006004000102030405060708090a0b0c0d0e0f101112131415161718191a"
                    "1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a"
                    "3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a"
                    "00000000"
                ),
                ciphertext: &hex_literal::hex!(
                    "b90ee4d00d920d99ad00d1e4913ea2b8798a0fa019aa2804dc3bce6e453cff5a"
                    "35fb0b25df7af8afd871689ec5680bd83d33dcb6ade16ca051730a6a24378651"
                    "5e6265846450e752e01ae4c89cac5542e62b5e54f0429a79b53841f78cd47ed2"
                    "ee4501a8"
                ),
                tag: hex_literal::hex!("ba0b1023e4e253fa70386c16a309e9e6"),
            },
        ];
        // Both implementations when built with libcrypto's.
        for (i, v) in vectors.iter().enumerate() {
            let (ciphertext, tag) = seal(&v.key, v.sequence_number, v.plaintext);
            assert_eq!(ciphertext, v.ciphertext, "vector {i}: ciphertext");
            assert_eq!(tag, v.tag, "vector {i}: tag");
            let (ciphertext, tag) =
                seal_with(SealingKey::rustcrypto(&v.key), v.sequence_number, v.plaintext);
            assert_eq!(ciphertext, v.ciphertext, "vector {i}: ciphertext (crates)");
            assert_eq!(tag, v.tag, "vector {i}: tag (crates)");

            let opening = OpeningKey::new(&v.key);
            let length = opening.decrypt_packet_length(v.sequence_number, &v.ciphertext[..4]);
            assert_eq!(length, v.plaintext[..4], "vector {i}: length");
            let sealed = concat(v.ciphertext, &v.tag);
            let payload = open(&v.key, v.sequence_number, &sealed).unwrap();
            assert_eq!(
                payload,
                v.plaintext[PACKET_LENGTH_LEN..],
                "vector {i}: opened"
            );
            let payload =
                open_with(OpeningKey::rustcrypto(&v.key), v.sequence_number, &sealed).unwrap();
            assert_eq!(
                payload,
                v.plaintext[PACKET_LENGTH_LEN..],
                "vector {i}: opened (crates)"
            );
        }
    }

    /// Built with the feature, every key uses libcrypto (so the tests here
    /// test it, and a libcrypto that silently fell back would fail them).
    #[cfg(feature = "openssl-chacha20-poly1305")]
    #[test]
    fn libcrypto_is_used_when_built_with_it() {
        assert!(SealingKey::new(&[7; 64]).libcrypto.is_some());
        assert!(OpeningKey::new(&[7; 64]).libcrypto.is_some());
        assert!(SealingKey::rustcrypto(&[7; 64]).libcrypto.is_none());
        assert!(super::super::chacha20_poly1305_uses_libcrypto());
    }

    /// libcrypto's ChaCha20 and Poly1305 and the crates' seal to the same
    /// bytes, and each opens what the other sealed, for payloads from empty
    /// to past 32 KiB and at the edges of the sequence number space; a key
    /// that falls back to the crates half way keeps the stream intact.
    #[cfg(feature = "openssl-chacha20-poly1305")]
    #[test]
    fn libcrypto_and_the_crates_make_the_same_packets() {
        let mut key = [0u8; 64];
        for (i, b) in key.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(91).wrapping_add(5);
        }
        let payload_lengths = [0, 1, 15, 16, 63, 64, 65, 127, 200, 1000, 4096, 32768, 70000];
        let sequence_numbers = [0, 1, 2, 0x7fff_ffff, u32::MAX - 1, u32::MAX];
        for &len in &payload_lengths {
            let payload: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
            let packet = packet(&payload);
            for &seq in &sequence_numbers {
                let ours = seal_with(SealingKey::new(&key), seq, &packet);
                let crates = seal_with(SealingKey::rustcrypto(&key), seq, &packet);
                assert_eq!(ours, crates, "payload {len}, sequence number {seq}");
                let sealed = concat(&ours.0, &ours.1);
                for opening in [OpeningKey::new(&key), OpeningKey::rustcrypto(&key)] {
                    assert_eq!(
                        open_with(opening, seq, &sealed).unwrap(),
                        packet[PACKET_LENGTH_LEN..]
                    );
                }
            }
        }

        // One key for a stream of packets, as a connection uses it, which
        // drops libcrypto after the second packet (what a failed call does).
        let mut sealing = SealingKey::new(&key);
        let mut opening = OpeningKey::new(&key);
        for seq in 0..5u32 {
            if seq == 2 {
                sealing.libcrypto = None;
            }
            let packet = packet(&vec![seq as u8; 100 + seq as usize]);
            let mut buf = packet.clone();
            let mut tag = [0u8; TAG_LEN];
            sealing.seal(seq, &mut buf, &mut tag);
            buf.extend_from_slice(&tag);
            assert_eq!(opening.open(seq, &mut buf).unwrap(), &packet[PACKET_LENGTH_LEN..]);
        }
    }

    /// Packets sealed by aws-lc's `chacha20_poly1305_openssh` (what russh
    /// used before patch 5) and by ours are the same bytes, and each opens
    /// the other's, for payloads from empty to several ChaCha20 blocks and
    /// a full 32 KiB packet, at the edges of the sequence number space.
    #[cfg(feature = "aws-lc-rs")]
    #[test]
    fn same_packets_as_aws_lc() {
        use aws_lc_rs::aead::chacha20_poly1305_openssh as aws;

        let mut key = [0u8; 64];
        for (i, b) in key.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        let aws_sealing = aws::SealingKey::new(&key);
        let aws_opening = aws::OpeningKey::new(&key);
        let payload_lengths = [0, 1, 15, 16, 63, 64, 65, 200, 1000, 4096, 32768 - 64, 32768];
        let sequence_numbers = [0, 1, 7, 3, 0x7fff_ffff, u32::MAX - 1, u32::MAX];
        for &len in &payload_lengths {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let packet = packet(&payload);
            for &seq in &sequence_numbers {
                let (ours, our_tag) = seal(&key, seq, &packet);
                let mut theirs = packet.clone();
                let mut their_tag = [0u8; aws::TAG_LEN];
                aws_sealing.seal_in_place(seq, &mut theirs, &mut their_tag);
                assert_eq!(
                    ours, theirs,
                    "payload {len}, sequence number {seq}: ciphertext"
                );
                assert_eq!(
                    our_tag, their_tag,
                    "payload {len}, sequence number {seq}: tag"
                );

                let mut length = [0u8; 4];
                length.copy_from_slice(&ours[..4]);
                assert_eq!(
                    OpeningKey::new(&key).decrypt_packet_length(seq, &length),
                    aws_opening.decrypt_packet_length(seq, length),
                );
                // Each opens what the other sealed.
                let opened = open(&key, seq, &concat(&theirs, &their_tag)).unwrap();
                assert_eq!(opened, packet[PACKET_LENGTH_LEN..]);
                let mut buf = ours.clone();
                let opened = aws_opening.open_in_place(seq, &mut buf, &our_tag).unwrap();
                assert_eq!(opened, &packet[PACKET_LENGTH_LEN..]);
            }
        }
    }

    /// A packet whose tag, encrypted length or body was changed, that is
    /// opened under another sequence number, or that is too short to hold a
    /// length and a tag, is refused.
    #[test]
    fn tampered_packets_are_refused() {
        tampered_packets_are_refused_by(OpeningKey::new);
        tampered_packets_are_refused_by(OpeningKey::rustcrypto);
    }

    fn tampered_packets_are_refused_by(opening: fn(&[u8]) -> OpeningKey) {
        let open = |key: &[u8; 64], seq: u32, sealed: &[u8]| open_with(opening(key), seq, sealed);
        let key = [0x5au8; 64];
        let packet = packet(b"SSH_MSG_CHANNEL_DATA, more or less");
        let (ciphertext, tag) = seal(&key, 42, &packet);
        let sealed = concat(&ciphertext, &tag);
        assert_eq!(
            open(&key, 42, &sealed).unwrap(),
            packet[PACKET_LENGTH_LEN..]
        );

        let last = sealed.len() - 1;
        for (what, index) in [
            ("first length byte", 0),
            ("last length byte", PACKET_LENGTH_LEN - 1),
            ("first body byte", PACKET_LENGTH_LEN),
            ("last body byte", ciphertext.len() - 1),
            ("first tag byte", ciphertext.len()),
            ("last tag byte", last),
        ] {
            for bit in [0x01, 0x80] {
                let mut bad = sealed.clone();
                bad[index] ^= bit;
                assert!(
                    matches!(open(&key, 42, &bad), Err(Error::DecryptionError)),
                    "{what} ^ {bit:#x} was accepted"
                );
            }
        }
        assert!(matches!(
            open(&key, 43, &sealed),
            Err(Error::DecryptionError)
        ));
        let mut other_key = key;
        other_key[0] ^= 1;
        assert!(matches!(
            open(&other_key, 42, &sealed),
            Err(Error::DecryptionError)
        ));
        for len in [0, 1, TAG_LEN, TAG_LEN + PACKET_LENGTH_LEN - 1] {
            assert!(
                matches!(open(&key, 42, &sealed[..len]), Err(Error::DecryptionError)),
                "{len} bytes"
            );
        }
    }
}
