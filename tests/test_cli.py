from typer.testing import CliRunner

from floatlab.cli import app

runner = CliRunner()


def test_formats_table_lists_every_format():
    r = runner.invoke(app, ["formats"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for name in ["e4m3", "hif8", "e8m0", "int4", "tf32"]:
        assert name in r.output
    assert "57344" in r.output and "2^15" in r.output


def test_formats_values_lists_every_code():
    r = runner.invoke(app, ["formats", "hif8", "--values"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "0x6F" in r.output and "inf" in r.output and "0x80" in r.output
    assert r.output.count("0x") == 256


def test_formats_unknown_name_is_a_clear_error():
    r = runner.invoke(app, ["formats", "hifloat9"])
    assert r.exit_code != 0 and "Did you mean" in r.output
