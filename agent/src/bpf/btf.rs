//! Kernel layout facts from BTF, for the programs' `CONFIG` global.
//!
//! Rust BPF has no CO-RE field relocations, so the agent reads `/sys/kernel/btf/vmlinux` at
//! load time and hands the programs plain byte offsets. Missing mandatory fields make
//! loading fail with the exact struct and field named; optional ones clear a feature bit.

use std::path::Path;

use bpflet_common::{Config, feature};
use btf_rs::{Btf, BtfType, Type};
use fallible_iterator::FallibleIterator;

use super::BpfError;

/// Parsed kernel BTF.
pub struct KernelBtf {
    btf: Btf,
    /// Every enumerator by name: enumerators are not types, so they cannot be looked up by
    /// name directly, and the enums holding them are often anonymous.
    enumerators: std::collections::HashMap<String, u32>,
}

impl KernelBtf {
    pub fn load(path: &Path) -> Result<Self, BpfError> {
        let btf = Btf::from_file(path).map_err(|source| BpfError::Btf {
            path: path.to_owned(),
            source,
        })?;
        let mut enumerators = std::collections::HashMap::new();
        let mut types = btf.type_iter();
        while let Ok(Some(t)) = types.next() {
            if let Type::Enum(e) = t {
                for m in &e.members {
                    if let Ok(name) = btf.resolve_name(m) {
                        enumerators.entry(name).or_insert_with(|| m.val());
                    }
                }
            }
        }
        Ok(Self { btf, enumerators })
    }

    /// The complete (non-forward) definition of `struct name` or `union name`.
    fn composite(&self, name: &str) -> Result<btf_rs::Struct, BpfError> {
        let types = self.btf.resolve_types_by_name(name).unwrap_or_default();
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) | Type::Union(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| BpfError::BtfMissing {
                what: format!("struct {name}"),
            })
    }

    fn name_of(&self, t: &dyn BtfType) -> String {
        self.btf.resolve_name(t).unwrap_or_default()
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut t: Type) -> Type {
        for _ in 0..16 {
            match &t {
                Type::Typedef(_)
                | Type::Volatile(_)
                | Type::Const(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let Some(inner) = t
                        .as_btf_type()
                        .and_then(|b| self.btf.resolve_chained_type(b).ok())
                    else {
                        return t;
                    };
                    t = inner;
                }
                _ => return t,
            }
        }
        t
    }

    /// Byte offset of `field` in `s`, looking through anonymous structs and unions.
    fn find_member(&self, s: &btf_rs::Struct, field: &str) -> Option<u32> {
        for m in &s.members {
            let name = self.name_of(m);
            if name == field {
                return Some(m.bit_offset() / 8);
            }
            if name.is_empty() {
                let inner = self.btf.resolve_chained_type(m).ok().map(|t| self.strip(t));
                if let Some(Type::Struct(inner) | Type::Union(inner)) = inner
                    && let Some(off) = self.find_member(&inner, field)
                {
                    return Some(m.bit_offset() / 8 + off);
                }
            }
        }
        None
    }

    /// Byte offset of `strukt.field`.
    pub fn offset(&self, strukt: &str, field: &str) -> Result<u32, BpfError> {
        let s = self.composite(strukt)?;
        self.find_member(&s, field)
            .ok_or_else(|| BpfError::BtfMissing {
                what: format!("field {field} of struct {strukt}"),
            })
    }

    pub fn size(&self, strukt: &str) -> Result<u32, BpfError> {
        let size = self.composite(strukt)?.size();
        u32::try_from(size).map_err(|_| BpfError::BtfMissing {
            what: format!("a sane size of struct {strukt} ({size} bytes)"),
        })
    }

    /// Value of enumerator `variant`.
    pub fn enum_value(&self, variant: &str) -> Result<u32, BpfError> {
        self.enumerators
            .get(variant)
            .copied()
            .ok_or_else(|| BpfError::BtfMissing {
                what: format!("enumerator {variant}"),
            })
    }
}

/// Fills every offset of [`Config`] from BTF. `features` gains `READY` and the optional
/// facts that were found; a mandatory fact that is missing is an error naming it.
pub fn resolve_config(btf: &KernelBtf) -> Result<Config, BpfError> {
    let mut c = Config {
        task_pid: btf.offset("task_struct", "pid")?,
        task_tgid: btf.offset("task_struct", "tgid")?,
        task_comm: btf.offset("task_struct", "comm")?,
        task_cgroups: btf.offset("task_struct", "cgroups")?,
        task_signal: btf.offset("task_struct", "signal")?,
        task_mm: btf.offset("task_struct", "mm")?,
        signal_oom_score_adj: btf.offset("signal_struct", "oom_score_adj")?,
        mm_total_vm: btf.offset("mm_struct", "total_vm")?,
        css_set_subsys: btf.offset("css_set", "subsys")?,
        css_set_dfl_cgrp: btf.offset("css_set", "dfl_cgrp")?,
        memory_cgrp_id: btf.enum_value("memory_cgrp_id")?,
        css_cgroup: btf.offset("cgroup_subsys_state", "cgroup")?,
        cgroup_kn: btf.offset("cgroup", "kn")?,
        cgroup_level: btf.offset("cgroup", "level")?,
        cgroup_ancestors: btf.offset("cgroup", "ancestors")?,
        cgroup_root: btf.offset("cgroup", "root")?,
        root_hierarchy_id: btf.offset("cgroup_root", "hierarchy_id")?,
        kn_id: btf.offset("kernfs_node", "id")?,
        memcg_css: btf.offset("mem_cgroup", "css")?,
        memcg_memory: btf.offset("mem_cgroup", "memory")?,
        counter_usage: btf.offset("page_counter", "usage")?,
        counter_max: btf.offset("page_counter", "max")?,
        counter_failcnt: btf.offset("page_counter", "failcnt")?,
        counter_parent: btf.offset("page_counter", "parent")?,
        vm_pgscan_kswapd: btf.enum_value("PGSCAN_KSWAPD")?,
        vm_pgscan_direct: btf.enum_value("PGSCAN_DIRECT")?,
        vm_pgsteal_kswapd: btf.enum_value("PGSTEAL_KSWAPD")?,
        vm_pgsteal_direct: btf.enum_value("PGSTEAL_DIRECT")?,
        ..Config::default()
    };
    c.features = feature::READY;
    if let Ok(off) = btf.offset("task_struct", "exit_code") {
        c.task_exit_code = off;
        c.features |= feature::EXIT_CODE;
    }
    let pidns = (|| -> Result<(u32, u32, u32, u32, u32), BpfError> {
        Ok((
            btf.offset("task_struct", "thread_pid")?,
            btf.offset("pid", "level")?,
            btf.offset("pid", "numbers")?,
            btf.size("upid")?,
            btf.offset("upid", "nr")?,
        ))
    })();
    if let Ok((thread_pid, level, numbers, size, nr)) = pidns {
        c.task_thread_pid = thread_pid;
        c.pid_level = level;
        c.pid_numbers = numbers;
        c.upid_size = size;
        c.upid_nr = nr;
        c.features |= feature::PIDNS;
    }
    // Since 6.2 `mm_struct.rss_stat` is `struct percpu_counter[NR_MM_COUNTERS]`; older
    // layouts are not read (the OOM event then reports no rss breakdown).
    let rss = (|| -> Result<(u32, u32, u32, u32, u32, u32), BpfError> {
        Ok((
            btf.offset("mm_struct", "rss_stat")?,
            btf.size("percpu_counter")?,
            btf.offset("percpu_counter", "count")?,
            btf.enum_value("MM_FILEPAGES")?,
            btf.enum_value("MM_ANONPAGES")?,
            btf.enum_value("MM_SHMEMPAGES")?,
        ))
    })();
    if let Ok((rss_stat, size, count, file, anon, shmem)) = rss {
        c.mm_rss_stat = rss_stat;
        c.percpu_counter_size = size;
        c.percpu_counter_count = count;
        c.rss_file_idx = file;
        c.rss_anon_idx = anon;
        c.rss_shmem_idx = shmem;
        c.features |= feature::RSS_PERCPU;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the running kernel's BTF when it has one (every kernel bpflet supports does;
    /// the root integration tests require it). Without it this test has nothing to check.
    #[test]
    fn resolves_offsets_from_running_kernel() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        assert!(path.exists(), "kernel BTF missing at {}", path.display());
        let btf = KernelBtf::load(path).expect("parse vmlinux BTF");
        let c = resolve_config(&btf).expect("resolve config");
        assert_ne!(c.features & feature::READY, 0);
        assert_ne!(
            c.features & feature::EXIT_CODE,
            0,
            "task_struct.exit_code not found"
        );
        // Layout facts that hold on every kernel: css is the first member of mem_cgroup,
        // cgroup_subsys_state.cgroup is its first member, subsys is first in css_set.
        assert_eq!(c.memcg_css, 0);
        assert_eq!(c.css_cgroup, 0);
        assert_eq!(c.css_set_subsys, 0);
        assert!(
            c.task_tgid == c.task_pid + 4,
            "pid and tgid are adjacent pid_t fields"
        );
        assert!(c.vm_pgscan_direct > 0 && c.vm_pgscan_kswapd > 0);
        assert_ne!(
            c.features & feature::PIDNS,
            0,
            "pid namespace layout not found"
        );
        // struct upid { int nr; struct pid_namespace *ns; } on 64-bit kernels.
        assert_eq!((c.upid_nr, c.upid_size), (0, 16));
        let missing = btf.offset("task_struct", "no_such_field").unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("field no_such_field of struct task_struct"),
            "{missing}"
        );
    }
}
