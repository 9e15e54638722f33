//! Page-aligned byte buffers, zero-padded to whole pages: what the data file writer can hand
//! to the disk with O_DIRECT, without a copy through the page cache.

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

pub const PAGE: usize = 4096;

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
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> PageBuf {
        let cap = len.next_multiple_of(PAGE).max(PAGE);
        let layout = Self::layout(cap);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| handle_alloc_error(layout));
        PageBuf { ptr, len, cap }
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

    fn layout(cap: usize) -> Layout {
        Layout::from_size_align(cap, PAGE).expect("page-aligned layout")
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
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
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
