//! What a plugin instance can reach: its store state and the WASI context
//! built from its grants. Nothing is reachable unless granted: no
//! directories, no environment, no sockets, no stdio (a plugin's output,
//! when granted, goes to the log: see `stdio.rs`).

use super::bindings::log;
use super::limits::MemoryCap;
use super::nn::{NnContext, NnView};
use super::stdio::{GuestOutput, Stream};
use crate::config::Grants;
use crate::error::PluginErrorCause;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The data of one plugin instance's store.
pub(crate) struct PluginState {
    pub(crate) plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) nn: NnContext,
    pub(crate) limiter: MemoryCap,
    stderr: GuestOutput,
}

impl PluginState {
    pub fn new(
        plugin: Arc<str>,
        grants: &Grants,
        memory_bytes: usize,
        mut nn: NnContext,
    ) -> Result<Self, PluginErrorCause> {
        // Tensors a guest hands to `wasi:nn` are copies on the host, outside
        // its linear memory: they are held to the same cap.
        nn.limit_held_bytes(memory_bytes);
        let mut builder = WasiCtxBuilder::new();
        let stderr = GuestOutput::new(plugin.clone(), Stream::Stderr, grants.stdio);
        builder.stderr(stderr.clone());
        if grants.stdio {
            builder.stdout(GuestOutput::new(plugin.clone(), Stream::Stdout, true));
        }
        for (key, value) in &grants.env {
            builder.env(key, value);
        }
        for dir in &grants.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            builder
                .preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| PluginErrorCause::Grant {
                    path: dir.host.clone(),
                    source: e.into(),
                })?;
        }
        if !grants.network.is_empty() {
            let allowed: Arc<[std::net::SocketAddr]> = grants.network.clone().into();
            builder.socket_addr_check(move |addr, _use| {
                let ok = allowed.contains(&addr);
                Box::pin(async move { ok })
            });
        }
        Ok(PluginState {
            plugin,
            wasi: builder.build(),
            table: ResourceTable::new(),
            nn,
            limiter: MemoryCap::new(memory_bytes),
            stderr,
        })
    }

    /// The end of what the plugin wrote to stderr (e.g. a panic message).
    pub fn captured_stderr(&self) -> String {
        self.stderr.tail()
    }

    pub(crate) fn nn_view(&mut self) -> NnView<'_> {
        NnView {
            table: &mut self.table,
            nn: &mut self.nn,
            plugin: &self.plugin,
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(target: crate::OUTPUT_TARGET, plugin, "{message}"),
            log::Level::Debug => tracing::debug!(target: crate::OUTPUT_TARGET, plugin, "{message}"),
            log::Level::Info => tracing::info!(target: crate::OUTPUT_TARGET, plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: crate::OUTPUT_TARGET, plugin, "{message}"),
            log::Level::Error => tracing::error!(target: crate::OUTPUT_TARGET, plugin, "{message}"),
        }
    }
}
