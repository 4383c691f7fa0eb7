"""The news readers on real cnews lines and on small files of each layout, bad lines included."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sweeplab.datasets.news import detect_layout, read_news
from sweeplab.datasets.errors import DataError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "news"


def _write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(b"".join(line.encode(encoding) + b"\n" for line in lines))
    return path


def test_real_cnews_lines(tmp_path: Path) -> None:
    real = [
        line
        for name in ("cnews.sample_GHY73.txt", "cnews.sample_AlieZVzz.txt")
        for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()
    ]
    assert len(real) == 13
    _write(tmp_path / "cnews.train.txt", real)
    shutil.copyfile(FIXTURES / "cnews.sample_AlieZVzz.txt", tmp_path / "cnews.test.txt")  # no final newline
    data = read_news(tmp_path, seed=0, val_fraction=0.3)
    assert data.layout == "cnews"
    assert data.classes == ("体育", "娱乐", "科技")  # from the data, sorted
    assert len(data.train) + len(data.val) == 13
    assert len(data.test) == 3
    assert [data.classes[i] for i in data.test.labels] == ["体育", "娱乐", "科技"]
    texts = data.train.texts + data.val.texts
    assert any(t.startswith("马晓旭意外受伤让国奥警惕") for t in texts)
    assert all("\t" not in t for t in texts)
    assert any("held out" in note for note in data.reports[0].notes)


def test_cnews_label_not_in_training_labels_is_skipped_with_its_line(tmp_path: Path) -> None:
    _write(tmp_path / "cnews.train.txt", ["体育\t球队获胜", "财经\t股市上涨", "体育\t又赢了"])
    _write(tmp_path / "cnews.val.txt", ["体育\t比赛", "时尚\t新款发布", "财经\t利率"])
    data = read_news(tmp_path)
    assert data.classes == ("体育", "财经")
    assert data.test is None
    val_report = data.reports[1]
    assert dict(val_report.counts) == {"label not in the label set": 1}
    assert val_report.first["label not in the label set"] == ["2"]
    assert val_report.used == 2 and val_report.rows == 3


def _thucnews(folder: Path, train: list[str], *, encoding_of_line_4: str = "utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "class.txt").write_text("finance\nrealty\nsports", encoding="utf-8")  # no final newline
    raw = b"".join(
        line.encode(encoding_of_line_4 if number == 4 else "utf-8") + b"\n" for number, line in enumerate(train, start=1)
    )
    (folder / "train.txt").write_bytes(raw)
    _write(folder / "dev.txt", ["央行降息\t0", "楼市回暖\t1"])
    _write(folder / "test.txt", ["股市大涨\t0", "主队获胜\t2"])
    return folder


def test_thucnews_bad_lines_are_counted_with_line_numbers(tmp_path: Path) -> None:
    train = [
        "央行宣布降准\t0",      # 1 ok
        "没有制表符的标题 1",    # 2 no tab
        "\t2",                  # 3 empty text
        "北京房价上涨\t1",      # 4 GBK encoded: not UTF-8
        "球队夺冠\t12",         # 5 label id outside class.txt
        "",                     # 6 empty line
        "国足战平对手\t2",      # 7 ok
        "基金净值\tx",          # 8 label not an id
    ]
    data = read_news(_thucnews(tmp_path / "d", train, encoding_of_line_4="gbk"))
    assert data.layout == "thucnews"
    assert data.classes == ("finance", "realty", "sports")
    assert data.train.texts == ["央行宣布降准", "国足战平对手"]
    assert data.train.labels == [0, 2]
    assert data.train.origin == ["train.txt:1", "train.txt:7"]
    report = data.reports[0]
    assert dict(report.counts) == {
        "no tab": 1, "empty text": 1, "not UTF-8": 1, "label not in the label set": 2, "empty line": 1,
    }
    assert report.first["not UTF-8"] == ["4"]
    assert report.first["label not in the label set"] == ["5", "8"]
    assert report.rows == 8 and report.used == 2
    assert len(data.val) == 2 and len(data.test) == 2


def test_a_file_with_nothing_usable_is_one_clear_error(tmp_path: Path) -> None:
    folder = _thucnews(tmp_path / "gbk", ["北京房价上涨\t1", "上海房价上涨\t1"])
    (folder / "train.txt").write_bytes("北京房价上涨\t1\n上海房价上涨\t1\n".encode("gbk"))
    with pytest.raises(DataError, match=r"train\.txt: no usable lines \(.*2 x not UTF-8 \(first: 1, 2\)"):
        read_news(folder)
    _write(folder / "train.txt", ["北京房价上涨\t1"])
    (folder / "dev.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"dev\.txt: no usable lines \(the file is empty\)"):
        read_news(folder)


def test_layout_detection_and_naming(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no news training file found .*cnews.train.txt"):
        detect_layout(tmp_path)
    with pytest.raises(DataError, match="data directory not found"):
        detect_layout(tmp_path / "missing")
    folder = _thucnews(tmp_path / "t", ["央行宣布降准\t0", "国足战平对手\t2"])
    with pytest.raises(DataError, match=r"cnews\.train\.txt: file not found \(the cnews layout"):
        read_news(folder, layout="cnews")
    with pytest.raises(DataError, match="layout 'xml'"):
        read_news(folder, layout="xml")
    (folder / "class.txt").unlink()
    with pytest.raises(DataError, match=r"class\.txt: file not found"):
        read_news(folder)


def test_ccf_csv_layout_joins_title_and_content_and_holds_out_val_and_test(tmp_path: Path) -> None:
    rows = ['id,title,content']
    expected = {}
    for i in range(30):
        rows.append(f'n{i},标题{i},"正文{i}，第一行\n第二行"')
        expected[f"n{i}"] = i % 3
    rows += ['e1,,', 'x9,没有标签的新闻,正文', 'd1,同题,同题']
    (tmp_path / "Train_DataSet.csv").write_text("\n".join(rows) + "\n", encoding="utf-8-sig")  # with a BOM
    labels = ["id,label", *(f"{k},{v}" for k, v in expected.items()), "d1,1", "n0,2", "e1,0"]
    (tmp_path / "Train_DataSet_Label.csv").write_text("\n".join(labels) + "\n", encoding="utf-8")
    data = read_news(tmp_path, seed=1, val_fraction=0.2)
    assert data.layout == "ccf"
    assert data.classes == ("0", "1", "2")
    texts = data.train.texts + data.val.texts + data.test.texts
    assert len(texts) == 31 and len(data.test) == 7 and len(data.val) == 6
    assert "标题3 正文3，第一行\n第二行" in texts
    assert "同题" in texts  # a content equal to the title is not repeated
    report, label_report = data.reports
    assert dict(report.counts) == {"empty text": 1, "no label in Train_DataSet_Label.csv": 1}
    assert report.first["empty text"] == ["62"]  # line numbers count the lines of multi-line fields
    assert dict(label_report.counts) == {"duplicate id": 1}
    by_text = dict(zip(texts, data.train.labels + data.val.labels + data.test.labels))
    assert data.classes[by_text["标题4 正文4，第一行\n第二行"]] == "1"


def test_ccf_without_label_columns_names_the_header(tmp_path: Path) -> None:
    (tmp_path / "Train_DataSet.csv").write_text("id,title,content\na,b,c\n", encoding="utf-8")
    (tmp_path / "Train_DataSet_Label.csv").write_text("id,sentiment\na,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"Train_DataSet_Label\.csv:1: expected a header with id, label"):
        read_news(tmp_path)


def test_more_bad_inputs_are_one_line_errors_or_counted(tmp_path: Path) -> None:
    ccf = tmp_path / "ccf"
    ccf.mkdir()
    (ccf / "Train_DataSet.csv").write_text("id,title,content\n\na,标题,\n\nb,,\nc,标题三,正文\n", encoding="utf-8")
    (ccf / "Train_DataSet_Label.csv").write_text("id,label\na,0\nb,1\nc,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"Train_DataSet\.csv: 1 usable row\(s\): too few to hold out"):
        read_news(ccf)  # 2 rows: one held out for test, one left
    with pytest.raises(DataError, match=r"--val-fraction 0\.5: the ccf layout holds out that share twice"):
        read_news(ccf, val_fraction=0.5)
    from sweeplab.datasets.news import _csv_rows
    from sweeplab.core.data_report import ReadReport

    report = ReadReport("x")
    lines = [n for n, _ in _csv_rows(ccf / "Train_DataSet.csv", report, ("id", "title", "content"))]
    assert lines == [3, 5, 6]  # blank lines are skipped, not miscounted

    folder = _thucnews(tmp_path / "t", ["央行宣布降准\t0", "国足战平对手\t2"])
    (folder / "class.txt").write_text("finance\n\nsports\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"class\.txt:2: empty label name"):
        read_news(folder)
    (folder / "class.txt").write_bytes("财经\n".encode("gbk"))
    with pytest.raises(DataError, match=r"class\.txt: not UTF-8 text"):
        read_news(folder)
