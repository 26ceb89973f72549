"""Tests for scripts/check-layers.py on small fixture crates written to a temporary directory.

    python3 -m unittest discover -s scripts/tests      # or: scripts/check-layers.py --self-test
"""

import importlib.util
import io
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "check-layers.py"
spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
check_layers = importlib.util.module_from_spec(spec)
sys.modules["check_layers"] = check_layers  # dataclasses look their module up here
spec.loader.exec_module(check_layers)


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


class Fixture(unittest.TestCase):
    files: dict[str, str] = {}

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)
        write_tree(self.root, self.files)

    def tearDown(self):
        self.tmp.cleanup()

    def run_check(self, *crates, verbose=False, with_tests=True):
        out = io.StringIO()
        rc = check_layers.run(self.root, list(crates), verbose, with_tests=with_tests, out=out)
        return rc, out.getvalue()

    def edges(self, crate):
        return set(check_layers.analyse(self.root / crate, crate).edges)


class CycleIsFoundAndNamed(Fixture):
    files = {
        "Cargo.toml": '[workspace]\nmembers = ["looped", "clean"]\n',
        "looped/src/lib.rs": """
            //! A crate whose model reaches back into its service.
            pub mod model;
            pub mod service;
            pub mod store;
        """,
        "looped/src/model.rs": """
            use crate::service::Handle;
        """,
        "looped/src/service/mod.rs": """
            mod run;
            use crate::{model::{self, Thing}, store::Store as S};
        """,
        "looped/src/service/run.rs": """
            use super::Handle; // the same module: no edge
        """,
        "looped/src/store.rs": """
            pub struct Store;
        """,
        "clean/src/lib.rs": "pub mod a;\npub mod b;\n",
        "clean/src/a.rs": "use crate::b::B;\n",
        "clean/src/b.rs": "pub struct B;\n",
    }

    def test_exit_1_naming_the_cycle(self):
        rc, out = self.run_check("looped")
        self.assertEqual(rc, 1)
        self.assertIn("looped: import cycle: model -> service -> model", out)

    def test_grouped_and_renamed_uses_are_edges(self):
        self.assertEqual(
            self.edges("looped"),
            {("model", "service"), ("service", "model"), ("service", "store")},
        )

    def test_acyclic_crate_passes(self):
        rc, out = self.run_check("clean")
        self.assertEqual(rc, 0)
        self.assertIn("clean: no import cycle", out)

    def test_one_bad_crate_fails_the_run(self):
        rc, _ = self.run_check("clean", "looped")
        self.assertEqual(rc, 1)

    def test_verbose_prints_the_graph_with_where(self):
        _, out = self.run_check("clean", verbose=True)
        self.assertIn("a -> b", out)
        self.assertIn("clean/src/a.rs:1", out)

    def test_workspace_members_are_found(self):
        self.assertEqual(check_layers.workspace_crates(self.root), ["looped", "clean"])


class WhatIsNotAnEdge(Fixture):
    files = {
        "quiet/src/lib.rs": """
            pub mod a;
            pub mod b;
            pub fn helper() {}
        """,
        "quiet/src/a.rs": r'''
            // use crate::b::B;  (a comment)
            /* crate::b::B in a /* nested */ block comment */
            const S: &str = "crate::b::B in a string";
            const R: &str = r#"crate::b::B in a "raw" string"#;
            const C: char = '"';
            fn f<'a>(x: &'a str) -> &'a str { x }
            macro_rules! m { () => { $crate::b::B } }
            pub(crate) fn g() { crate::helper(); }
        ''',
        "quiet/src/b.rs": "pub struct B;\n",
        "quiet/src/main.rs": "use quiet::a;\nmod cli;\n",
        "quiet/src/cli.rs": "use crate::a;\n",
        "quiet/src/bin/tool.rs": "mod x { use crate::b; }\n",
    }

    def test_comments_strings_macros_and_root_items_make_no_edge(self):
        self.assertEqual(self.edges("quiet"), set())

    def test_binaries_are_not_modules(self):
        graph = check_layers.analyse(self.root / "quiet", "quiet")
        self.assertEqual(graph.modules, {"a", "b"})


class PathsResolved(Fixture):
    files = {
        "deep/src/lib.rs": """
            pub mod engine;
            pub mod fleet;
            pub mod time;
            pub use time::Timestamp;
            pub mod inline {
                use crate::fleet::Fleet;
            }
        """,
        "deep/src/engine/mod.rs": """
            mod pass;
            pub fn f() -> crate::fleet::Fleet { todo!() }
        """,
        "deep/src/engine/pass/mod.rs": """
            use super::super::time::Clock;
            use super::f;
            use self::inner::X;
            mod inner { pub struct X; use super::super::super::fleet::Y; }
        """,
        "deep/src/fleet.rs": """
            use super::Timestamp;      // through the root's re-export
            #[cfg(test)]
            mod tests {
                use super::*;           // fleet itself
                use crate::engine::f;   // test code only
            }
        """,
        "deep/src/time.rs": "pub struct Timestamp;\n",
    }

    def test_super_self_inline_and_reexports(self):
        self.assertEqual(
            self.edges("deep"),
            {
                ("engine", "fleet"),
                ("engine", "time"),
                ("fleet", "time"),
                ("fleet", "engine"),
                ("inline", "fleet"),
            },
        )

    def test_a_cycle_through_test_code_is_reported_as_such(self):
        rc, out = self.run_check("deep")
        self.assertEqual(rc, 1)
        self.assertIn("engine -> fleet -> engine (only through test code)", out)

    def test_ignoring_tests_drops_it(self):
        rc, _ = self.run_check("deep", with_tests=False)
        self.assertEqual(rc, 0)


class TestFiles(Fixture):
    files = {
        "t/src/lib.rs": "pub mod a;\npub mod b;\n",
        "t/src/a/mod.rs": "#[cfg(test)]\nmod tests;\nuse crate::b::B;\n",
        "t/src/a/tests.rs": "use crate::b::C;\n",
        "t/src/b.rs": "use crate::a::A;\n",
    }

    def test_a_file_declared_cfg_test_is_test_code(self):
        graph = check_layers.analyse(self.root / "t", "t")
        refs = graph.edges[("a", "b")]
        self.assertEqual([e.test for e in refs], [False, True])


if __name__ == "__main__":
    unittest.main()
