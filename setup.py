"""Packaging for cxr_study: every field comes from settings.ini (nbdev 2)."""
import shlex
from configparser import ConfigParser
from pathlib import Path

import setuptools

here = Path(__file__).parent
config = ConfigParser(delimiters=["="])
config.read(here / "settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]

licenses = {"apache2": "Apache-2.0"}  # SPDX expression
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable", "6 - Mature", "7 - Inactive"]
py_versions = "3.10 3.11 3.12 3.13".split()
min_python = cfg["min_python"]
spdx = licenses[cfg["license"]]

requirements = shlex.split(cfg.get("requirements", ""))
dev_requirements = shlex.split(cfg.get("dev_requirements", ""))
# decoders for the compressed DICOM syntaxes Pillow does not read (JPEG Lossless, JPEG-LS, 12-bit JPEG, HTJ2K):
# an extra, because pylibjpeg-libjpeg is GPL-3.0 licensed
dicom_requirements = shlex.split(cfg.get("dicom_requirements", ""))
console_scripts = [s.strip() for s in cfg.get("console_scripts", "").split(";") if s.strip()]

setuptools.setup(
    name=cfg["lib_name"].replace("_", "-"),
    version=cfg["version"],
    description=cfg["description"],
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else cfg["description"],
    long_description_content_type="text/markdown",
    keywords=cfg["keywords"].split(),
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=spdx,
    license_files=["LICENSE"],
    url=cfg["git_url"],
    project_urls={"Documentation": cfg["doc_host"] + cfg["doc_baseurl"], "Source": cfg["git_url"]},
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"],
        "Natural Language :: " + cfg["language"],
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ] + ["Programming Language :: Python :: " + v for v in py_versions[py_versions.index(min_python):]],
    python_requires=">=" + min_python,
    packages=setuptools.find_packages(include=["cxr_study", "cxr_study.*"]) + ["cxr_study.experiments", "cxr_study.pages", "cxr_study.studies"],
    # The experiment and report templates are notebooks in nbs/experiments and nbs/reports, and the study
    # files are in studies/; they ship inside the package so that an installed cxr-study can run them.
    package_dir={"cxr_study.experiments": "nbs/experiments", "cxr_study.pages": "nbs/reports", "cxr_study.studies": "studies"},
    package_data={"cxr_study.experiments": ["*.ipynb"], "cxr_study.pages": ["*.ipynb"], "cxr_study.studies": ["*.yaml"],
                  "cxr_study": ["reference/*.csv", "weights/*"]},
    include_package_data=True,
    install_requires=requirements,
    extras_require={"dev": dev_requirements + dicom_requirements, "dicom": dicom_requirements},
    entry_points={"console_scripts": console_scripts, "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
