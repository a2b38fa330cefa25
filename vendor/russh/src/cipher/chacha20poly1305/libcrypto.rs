// portvakt patch 13 (see PATCHES.md).

//! The payload's ChaCha20 and the Poly1305 tag of
//! `chacha20-poly1305@openssh.com`, computed by the system's OpenSSL 3
//! libcrypto (feature `openssl-chacha20-poly1305`).
//!
//! OpenSSL picks its code at run time, as the crates do, but has faster
//! code for both: an AVX-512 ChaCha20 and an AVX-512 IFMA Poly1305, where
//! the `poly1305` crate has AVX2 code only. The construction is the one
//! of the parent module (PROTOCOL.chacha20poly1305): K_2 with nonce =
//! sequence number (64-bit big endian) makes the Poly1305 key from
//! keystream block 0 and encrypts the payload from block 1, and the tag
//! covers the encrypted length and payload. OpenSSL's ChaCha20 IV is a
//! 32-bit little-endian block counter and a 96-bit nonce; with the
//! counter's carry into the next word (which OpenSSL does) the IV
//! `0^8 || nonce` is the 64-bit counter and 64-bit nonce of the original
//! ChaCha20 that OpenSSH uses (OpenSSH's own `cipher-chachapoly-libcrypto.c`
//! calls `EVP_chacha20` the same way).
//!
//! Every libcrypto call is checked, and [`Failed`] tells the caller
//! whether the packet was changed before one failed.

use std::ffi::c_int;
use std::ptr::{self, NonNull};
use std::sync::OnceLock;

use openssl_sys as ffi;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::{PACKET_LENGTH_LEN, TAG_LEN};

/// Why a packet was not sealed or opened here.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failed {
    /// A libcrypto call failed before the packet was changed: the crates
    /// can seal or open it instead.
    Untouched,
    /// A libcrypto call failed after part of the packet may have been
    /// encrypted or decrypted: the connection must end.
    Touched,
    /// The tag does not match (open only): the packet is refused.
    Refused,
}

/// OpenSSL's POLY1305 MAC, fetched once per process.
struct Poly1305Mac(NonNull<ffi::EVP_MAC>);

// SAFETY: an `EVP_MAC` is an immutable, reference-counted algorithm
// description; OpenSSL 3 lets any number of threads create contexts from
// one at the same time (`EVP_MAC_CTX_new` takes a reference).
unsafe impl Send for Poly1305Mac {}
unsafe impl Sync for Poly1305Mac {}

/// None when libcrypto has no POLY1305 MAC (a configuration that loads
/// only the FIPS provider, say); the crates are used then.
fn poly1305() -> Option<&'static Poly1305Mac> {
    static MAC: OnceLock<Option<Poly1305Mac>> = OnceLock::new();
    MAC.get_or_init(|| {
        // SAFETY: the name is a NUL-terminated literal; NULL library
        // context and properties mean the defaults.
        let mac = unsafe { ffi::EVP_MAC_fetch(ptr::null_mut(), c"POLY1305".as_ptr(), ptr::null()) };
        NonNull::new(mac).map(Poly1305Mac)
    })
    .as_ref()
}

/// A ChaCha20 context keyed with K_2 and a Poly1305 context, for one
/// direction of one connection.
pub(super) struct Payload {
    cipher: NonNull<ffi::EVP_CIPHER_CTX>,
    mac: NonNull<ffi::EVP_MAC_CTX>,
}

// SAFETY: both contexts belong to this value alone and are only used
// through `&mut self`; OpenSSL contexts may move between threads as long
// as one thread at a time uses them.
unsafe impl Send for Payload {}

impl Drop for Payload {
    fn drop(&mut self) {
        // SAFETY: both were allocated by libcrypto in `new` and are freed
        // once, here; the free functions also wipe the key material.
        unsafe {
            ffi::EVP_MAC_CTX_free(self.mac.as_ptr());
            ffi::EVP_CIPHER_CTX_free(self.cipher.as_ptr());
        }
    }
}

impl Payload {
    /// Contexts for K_2, or None if libcrypto cannot make them (no
    /// POLY1305 or ChaCha20 in it, or no memory).
    pub(super) fn new(main_key: &[u8; 32]) -> Option<Payload> {
        let mac = poly1305()?;
        // SAFETY: each pointer is checked before use; on an early return
        // `payload` (once made) frees what was allocated.
        unsafe {
            let cipher = NonNull::new(ffi::EVP_CIPHER_CTX_new())?;
            let Some(mac) = NonNull::new(ffi::EVP_MAC_CTX_new(mac.0.as_ptr())) else {
                ffi::EVP_CIPHER_CTX_free(cipher.as_ptr());
                return None;
            };
            let payload = Payload { cipher, mac };
            let chacha20 = ffi::EVP_chacha20();
            // The key now; the IV (block counter and nonce) per packet.
            if chacha20.is_null()
                || ffi::EVP_EncryptInit_ex(
                    cipher.as_ptr(),
                    chacha20,
                    ptr::null_mut(),
                    main_key.as_ptr(),
                    ptr::null(),
                ) != 1
            {
                return None;
            }
            Some(payload)
        }
    }

    /// Keystream block 0 for this packet (its first 32 bytes are the
    /// Poly1305 key); the cipher is left at block 1.
    fn start(&mut self, sequence_number: u32) -> Option<[u8; 64]> {
        let mut iv = [0u8; 16];
        iv[8..].copy_from_slice(&u64::from(sequence_number).to_be_bytes());
        // SAFETY: a keyed context; a NULL cipher, engine and key keep
        // what `new` set, the IV is 16 bytes as EVP_chacha20 takes.
        let ok = unsafe {
            ffi::EVP_EncryptInit_ex(
                self.cipher.as_ptr(),
                ptr::null(),
                ptr::null_mut(),
                ptr::null(),
                iv.as_ptr(),
            )
        } == 1;
        let mut block = [0u8; 64];
        (ok && self.crypt(&mut block)).then_some(block)
    }

    /// XORs the next keystream bytes into `data`.
    fn crypt(&mut self, data: &mut [u8]) -> bool {
        for piece in data.chunks_mut(1 << 30) {
            let Ok(len) = c_int::try_from(piece.len()) else {
                return false;
            };
            let mut written: c_int = 0;
            let p = piece.as_mut_ptr();
            // SAFETY: `p` is valid for `len` bytes; EVP_EncryptUpdate
            // allows the output to be the input, and a stream cipher
            // writes exactly `len` bytes (checked below).
            let ok =
                unsafe { ffi::EVP_EncryptUpdate(self.cipher.as_ptr(), p, &mut written, p, len) }
                    == 1;
            if !ok || written != len {
                return false;
            }
        }
        true
    }

    /// The Poly1305 tag of `data` under `key` (32 bytes).
    fn tag(&mut self, key: &[u8], data: &[u8]) -> Option<[u8; TAG_LEN]> {
        let mut tag = [0u8; TAG_LEN];
        let mut len = 0usize;
        // SAFETY: a context of POLY1305, which takes a 32-byte key; the
        // slices are valid for the lengths passed; `final` writes at most
        // `tag.len()` bytes and says how many.
        let ok = unsafe {
            ffi::EVP_MAC_init(self.mac.as_ptr(), key.as_ptr(), key.len(), ptr::null()) == 1
                && ffi::EVP_MAC_update(self.mac.as_ptr(), data.as_ptr(), data.len()) == 1
                && ffi::EVP_MAC_final(self.mac.as_ptr(), tag.as_mut_ptr(), &mut len, tag.len()) == 1
        };
        (ok && len == TAG_LEN).then_some(tag)
    }

    /// Encrypts the payload of `packet` (`packet_length || rest`, the
    /// length already encrypted with K_1) in place and writes the tag.
    pub(super) fn seal(
        &mut self,
        sequence_number: u32,
        packet: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), Failed> {
        let mut block = self.start(sequence_number).ok_or(Failed::Untouched)?;
        let length_len = PACKET_LENGTH_LEN.min(packet.len());
        let encrypted = packet
            .get_mut(length_len..)
            .is_some_and(|payload| self.crypt(payload));
        let result = if encrypted {
            let (key, _) = block.split_at(32);
            // The packet is encrypted now: should libcrypto's Poly1305 fail,
            // the crate's makes the tag.
            Ok(self.tag(key, packet).unwrap_or_else(|| {
                use poly1305::universal_hash::KeyInit;
                let mut k = [0u8; 32];
                k.copy_from_slice(key);
                let t = poly1305::Poly1305::new(&k.into()).compute_unpadded(packet);
                k.zeroize();
                t.into()
            }))
        } else {
            Err(Failed::Touched)
        };
        block.zeroize();
        let t = result?;
        if let Some(out) = tag.get_mut(..TAG_LEN) {
            out.copy_from_slice(&t);
        }
        Ok(())
    }

    /// Checks the tag of `packet` (encrypted length and payload), then
    /// decrypts its payload in place.
    pub(super) fn open(
        &mut self,
        sequence_number: u32,
        packet: &mut [u8],
        tag: &[u8],
    ) -> Result<(), Failed> {
        let mut block = self.start(sequence_number).ok_or(Failed::Untouched)?;
        let (key, _) = block.split_at(32);
        let expected = self.tag(key, packet);
        block.zeroize();
        let expected = expected.ok_or(Failed::Untouched)?;
        if !bool::from(expected.as_slice().ct_eq(tag)) {
            return Err(Failed::Refused);
        }
        let decrypted = packet
            .get_mut(PACKET_LENGTH_LEN..)
            .is_some_and(|payload| self.crypt(payload));
        if decrypted {
            Ok(())
        } else {
            Err(Failed::Touched)
        }
    }
}
