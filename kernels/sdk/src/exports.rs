//! The macros every kernel uses whatever its kind: [`export_common!`](crate::export_common)
//! (ABI version and allocator exports) and [`manifest!`](crate::manifest).

/// Generates the exports every kernel has: ABI version and allocator.
#[macro_export]
macro_rules! export_common {
    () => {
        /// ABI version (Nearstore kernel ABI).
        #[unsafe(no_mangle)]
        pub extern "C" fn nearstore_abi_version() -> u32 {
            $crate::abi::ABI_VERSION
        }

        /// Allocation for the host's arena (Nearstore kernel ABI); 0 on failure.
        #[unsafe(no_mangle)]
        pub extern "C" fn nearstore_alloc(size: u32, align: u32) -> u32 {
            $crate::alloc_for_host(size, align)
        }
    };
}

/// Embeds the kernel manifest (`key=value` lines) as the `nearstore.manifest` custom section.
#[macro_export]
macro_rules! manifest {
    ($text:literal) => {
        #[unsafe(link_section = "nearstore.manifest")]
        #[used]
        static __NEARSTORE_MANIFEST: [u8; $text.len()] = *$text;
    };
}
