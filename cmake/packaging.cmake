# `cmake --install` and `make deb`: where Debian expects each piece.
#   /usr/bin/spritediffd, /usr/bin/spritectl
#   /etc/spritediff/config.json            (configs/debian.json: models, jobs, data under /var/lib/spritediff)
#   /usr/share/spritediff/models/          (the bundled models; the package's postinst copies them
#                                           to /var/lib/spritediff/models, where jobs publish too)
#   /usr/share/doc/spritediff/             (README.md and docs/)
#   /lib/systemd/system/spritediff.service (deploy/debian/spritediff.service)
# The .deb's dependencies come from the shared libraries the binaries load (dpkg-shlibdeps).
include(GNUInstallDirs)
install(TARGETS spritediffd spritectl RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${CMAKE_SOURCE_DIR}/configs/debian.json DESTINATION /etc/spritediff RENAME config.json)
install(DIRECTORY ${CMAKE_SOURCE_DIR}/models/ DESTINATION ${CMAKE_INSTALL_DATADIR}/spritediff/models)
install(FILES ${CMAKE_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY ${CMAKE_SOURCE_DIR}/docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR}/docs)
install(FILES ${CMAKE_SOURCE_DIR}/deploy/debian/spritediff.service DESTINATION /lib/systemd/system)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME spritediff)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "trains and serves small diffusion models for pixel-art sprites")
set(CPACK_PACKAGE_CONTACT "spritediff developers <spritediff@localhost>")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "passwd")  # useradd in postinst
# libtorch calls BLAS through libblas.so.3: OpenBLAS, not the reference BLAS (scripts/install-deps.sh says why).
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "libopenblas0-openmp")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_SOURCE_DIR}/deploy/debian/postinst ${CMAKE_SOURCE_DIR}/deploy/debian/prerm
    ${CMAKE_SOURCE_DIR}/deploy/debian/postrm ${CMAKE_SOURCE_DIR}/deploy/debian/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
