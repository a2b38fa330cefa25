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

use chacha20::ChaCha20Legacy;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use poly1305::Poly1305;
use poly1305::universal_hash::KeyInit;
use subtle::ConstantTimeEq;

use super::super::Error;
use crate::mac::MacAlgorithm;

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
        Box::new(OpeningKey(Keys::new(k)))
    }

    fn make_sealing_key(
        &self,
        k: &[u8],
        _: &[u8],
        _: &[u8],
        _: &dyn MacAlgorithm,
    ) -> Box<dyn super::SealingKey + Send> {
        Box::new(SealingKey(Keys::new(k)))
    }
}

pub struct OpeningKey(Keys);

pub struct SealingKey(Keys);

impl super::OpeningKey for OpeningKey {
    fn decrypt_packet_length(
        &self,
        sequence_number: u32,
        encrypted_packet_length: &[u8],
    ) -> [u8; 4] {
        let mut length = [0u8; 4];
        length.copy_from_slice(encrypted_packet_length.get(..4).unwrap_or(&[0; 4]));
        self.0.crypt_length(sequence_number, &mut length);
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
        let (mut cipher, poly_key) = self.0.main_cipher(sequence_number);
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
        let (length, payload) = plaintext_in_ciphertext_out.split_at_mut(
            super::PACKET_LENGTH_LEN.min(plaintext_in_ciphertext_out.len()),
        );
        self.0.crypt_length(sequence_number, length);
        let (mut cipher, poly_key) = self.0.main_cipher(sequence_number);
        cipher.apply_keystream(payload);
        let t = Poly1305::new(&poly_key.into()).compute_unpadded(plaintext_in_ciphertext_out);
        if let Some(out) = tag.get_mut(..TAG_LEN) {
            out.copy_from_slice(&t);
        }
    }
}
