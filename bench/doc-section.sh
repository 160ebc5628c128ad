# Sourced by the bench/*.sh scripts. Each block of docs/benchmarks.md between
# `<!-- NAME:begin -->` and `<!-- NAME:end -->` belongs to one command, which rewrites it and
# nothing else, so sections can be re-measured independently.

# write_doc_block NAME FILE: the text between NAME's markers becomes FILE's contents; without the
# markers, the block is appended at the end of the page.
write_doc_block() {
    local name=$1 block=$2 doc=docs/benchmarks.md
    if grep -q "<!-- $name:begin -->" "$doc"; then
        awk -v block="$block" -v b="<!-- $name:begin -->" -v e="<!-- $name:end -->" '
            index($0, b) == 1 { print; while ((getline l < block) > 0) print l; skip = 1; next }
            index($0, e) == 1 { skip = 0 }
            !skip' "$doc" >"$doc.new"
    else
        { cat "$doc"; echo; echo "<!-- $name:begin -->"; cat "$block"; echo "<!-- $name:end -->"; } >"$doc.new"
    fi
    mv "$doc.new" "$doc"
}

# The commit figures are measured at, `-dirty` when the tree has uncommitted changes.
bench_commit() {
    git describe --always --dirty 2>/dev/null || echo unknown
}
