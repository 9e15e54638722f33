//! Page-aligned byte buffers, zero-padded to whole pages: what the data file writer can hand
//! to the disk with O_DIRECT, without a copy through the page cache.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

pub const PAGE: usize = 4096;
/// Buffers at least this large ask for transparent huge pages.
const HUGE_PAGE: usize = 2 << 20;

pub struct PageBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Allocated bytes: `len` rounded up to whole pages (at least one).
    cap: usize,
}

// SAFETY: PageBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for PageBuf {}
unsafe impl Sync for PageBuf {}

impl PageBuf {
    /// `len` zero bytes, in fresh anonymous pages: the kernel hands them out zeroed (no memset),
    /// and large ones come as transparent huge pages where the system allows it, since a 24 GB
    /// export would otherwise fault in some six million 4 KiB pages.
    pub fn zeroed(len: usize) -> PageBuf {
        let cap = len.next_multiple_of(PAGE).max(PAGE);
        // SAFETY: a private anonymous mapping of non-zero size; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            panic!(
                "out of memory: cannot map a {cap}-byte buffer: {}",
                std::io::Error::last_os_error()
            );
        }
        if cap >= HUGE_PAGE {
            // SAFETY: advice on the mapping just made; failure only means 4 KiB pages.
            unsafe { libc::madvise(ptr, cap, libc::MADV_HUGEPAGE) };
        }
        PageBuf {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
            cap,
        }
    }

    pub fn from_slice(bytes: &[u8]) -> PageBuf {
        let mut buf = PageBuf::zeroed(bytes.len());
        buf.copy_from_slice(bytes);
        buf
    }

    /// The bytes followed by their zero padding up to the next page boundary.
    pub fn padded(&self) -> &[u8] {
        // SAFETY: the allocation holds `cap` initialized bytes; the padding is never written
        // (DerefMut exposes only the first `len`), so it stays zero.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len.next_multiple_of(PAGE)) }
    }
}

impl Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` <= `cap` initialized bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for Deref, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: mapped in `zeroed` with this length, and no borrow outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zero_padded() {
        let buf = PageBuf::from_slice(&[7u8; 5000]);
        assert_eq!(buf.as_ptr() as usize % PAGE, 0);
        assert_eq!(buf.len(), 5000);
        assert_eq!(buf.padded().len(), 2 * PAGE);
        assert!(buf.padded()[5000..].iter().all(|&b| b == 0));
        assert_eq!(PageBuf::zeroed(0).padded().len(), 0);
    }
}
