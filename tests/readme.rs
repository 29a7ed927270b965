//! The README's rule table is the catalog: it must contain `catalog::markdown_table()` verbatim,
//! so the documented rules, names and severities never drift from the code.

use apiguard::catalog::markdown_table;

#[test]
fn readme_contains_the_rule_catalog_table() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let table = markdown_table();
    assert!(
        readme.contains(&table),
        "README.md does not contain the rule catalog table verbatim; paste the output of \
         apiguard::catalog::markdown_table():\n{table}"
    );
}
