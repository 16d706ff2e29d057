"""Differential testing of hsmfs's zip reading (tests/differential/): for
every committed zip fixture, every fuzz seed and a few thousand mutants of
a jarsigner-signed and an hsmfs-signed zip, whenever hsmfs says "valid",
libzip (with and without ZIP_CHECKCONS), Python zipfile, Info-ZIP unzip,
java.util.zip.ZipFile and java.util.zip.ZipInputStream must all see exactly
hsmfs's entries: the same names in the same order, the same bytes for each."""
import os
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(SRC / "tests" / "differential"))
import harness  # noqa: E402
import mutate  # noqa: E402

JAR = SRC / "tests" / "data" / "jar"
DIFF = SRC / "tests" / "differential"
BASES = [JAR / "signed-by-jarsigner.zip", JAR / "signed-by-hsmfs.zip",
         DIFF / "base-utf8.zip"]
SEED = os.environ.get("HSMFS_DIFF_SEED", "12")
# Mutants per base; 1000 x 3 runs in well under a minute.
COUNT = int(os.environ.get("HSMFS_DIFF_MUTANTS", "1000"))


@pytest.fixture(scope="module")
def trust(tmp_path_factory):
    """Both signers of the bases: the fixture signer and the differential
    one (base-utf8.zip: jarsigner, non-ASCII names, a 200 kB entry)."""
    p = tmp_path_factory.mktemp("trust") / "signers.pem"
    p.write_bytes((JAR / "fixture-signer.pem").read_bytes() +
                  (DIFF / "differential-signer.pem").read_bytes())
    return p


def _say(capsys, msg):
    with capsys.disabled():
        print(f"\n{msg}")


def _fail_on(rep):
    if rep.disagreements:
        shown = "\n".join(str(d) for d in rep.disagreements[:40])
        pytest.fail(f"{len(rep.disagreements)} disagreements on zips hsmfs finds "
                    f"valid:\n{shown}")


def test_harness_sees_a_difference(trust):
    """The comparison is not blind: the forged fixture read by every reader
    against hsmfs's view of the genuine one differs on README.txt only."""
    good = str(BASES[0])
    forged = str(JAR / "forged-content.zip")
    hv = harness.hsmfs_views([good, forged], trust)
    assert hv[good].valid and not hv[forged].valid
    views = {"python": harness.python_view(forged), "unzip": harness.unzip_view(forged),
             "java": harness.java_views([forged])[forged],
             "libzip": harness.libzip_views([forged], True)[forged]}
    for r, v in views.items():
        d = harness.compare(hv[good], v)
        assert len(d) == 1 and "README.txt" in d[0] and "bytes differ" in d[0], (r, d)
        assert harness.compare(hv[forged], v) == [], r


# Disagreements the harness found in zips once found valid (README there).
FOUND = {"symlink-entry.zip": "entry with external attributes 0xa1ff",
         "file-and-dir.zip": "entry name goes through a file",
         "stored-with-descriptor.zip": "stored entry with a data descriptor",
         "zip64-descriptor.zip": "zip64 local header for an entry whose sizes "
                                 "do not need it"}


def test_found_disagreements_refused(trust):
    """Each zip the harness caught (signed bytes intact, so a reader taking
    the honest view finds a valid signature) is refused, for its reason."""
    files = [str(DIFF / f) for f in FOUND]
    hv = harness.hsmfs_views(files, trust)
    for f, why in FOUND.items():
        v = hv[str(DIFF / f)]
        assert not v.valid and why in v.verdict, (f, v.verdict)


def test_fixtures_and_corpora_agree(trust, capsys):
    files = sorted(JAR.glob("*.zip")) + sorted(DIFF.glob("*.zip"))
    for c in ("jar", "zipdiff"):
        files += sorted(p for p in (SRC / "tests" / "fuzz" / "corpus" / c).glob("*")
                        if p.is_file())
    rep = harness.check(files, trust)
    _say(capsys, f"differential: {rep.files} fixtures and seeds, {rep.valid} valid, "
         f"{len(rep.disagreements)} disagreements")
    assert all(rep.verdicts[str(b)].startswith("valid ") for b in BASES)
    _fail_on(rep)


def test_mutants_agree(trust, tmp_path, capsys):
    n = 0
    for b in BASES:
        for name, data in mutate.mutants(b.read_bytes(), COUNT, SEED, b.stem):
            (tmp_path / name).write_bytes(data)
            n += 1
    assert n >= COUNT * len(BASES) * 0.99
    rep = harness.check(sorted(tmp_path.iterdir()), trust)
    _say(capsys, f"differential: {rep.files} mutants (seed {SEED}), {rep.valid} valid "
         f"per hsmfs, {rep.files - rep.valid} refused, "
         f"{len(rep.disagreements)} disagreements")
    assert rep.valid > 0
    _fail_on(rep)
