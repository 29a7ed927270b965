//! The documented rules never drift from the code: the README's rule table is the catalog
//! (`catalog::markdown_table()` verbatim), and docs/rules.md holds both the catalog and the
//! coverage table (`rules::coverage::markdown_table()`: every kind reviewed and the fields
//! each rule reads).

use apiguard::catalog::markdown_table;
use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn readme_contains_the_rule_catalog_table() {
    let table = markdown_table();
    assert!(
        read("README.md").contains(&table),
        "README.md does not contain the rule catalog table verbatim; paste the output of \
         apiguard::catalog::markdown_table():\n{table}"
    );
}

#[test]
fn docs_list_every_kind_and_field_each_rule_reads() {
    let rules_md = read("docs/rules.md");
    let catalog = markdown_table();
    assert!(
        rules_md.contains(&catalog),
        "docs/rules.md does not contain the rule catalog table verbatim:\n{catalog}"
    );
    let coverage = apiguard::rules::coverage::markdown_table();
    assert!(
        rules_md.contains(&coverage),
        "docs/rules.md does not contain the coverage table verbatim; paste the output of \
         apiguard::rules::coverage::markdown_table():\n{coverage}"
    );
    // Every reviewed kind appears in the table.
    for c in apiguard::rules::coverage::KINDS {
        for kind in c.kinds {
            assert!(
                coverage.contains(kind),
                "{kind} missing from the coverage table"
            );
        }
    }
}
